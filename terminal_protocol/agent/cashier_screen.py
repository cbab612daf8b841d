"""The cashier's screen: a full-screen text UI (Textual) built for a till. The amount is large, the
state is a coloured word (waiting for the card, sending, accepted, refused, cancelled), the keys
are always shown at the bottom, and the date and time are on top.

One operation at a time: while one runs, the menu keys are switched off, so a key typed while
"Présentez la carte" waits is dropped at once, never run later as a menu choice. Échap abandons
the card wait or the question being asked. Void and close are confirmed; what needs the
supervisor's PIN asks for it (masked).
"""

from __future__ import annotations

import asyncio
import datetime as dt

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Digits, Footer, Input, Label, Static

from terminal_protocol.agent import cashier_texts as texts
from terminal_protocol.agent.agent import TerminalAgent
from terminal_protocol.agent.cashier_texts import Outcome
from terminal_protocol.amounts import AmountError, format_euros, parse_euros

# The state word for each outcome's status, and its colour class.
STATE_WORDS = {
    "approved": ("ACCEPTÉ", "good"), "partial": ("ACCEPTÉ PARTIELLEMENT", "warn"),
    "declined": ("REFUSÉ", "bad"), "no_answer": ("PAS DE RÉPONSE : VENTE ANNULÉE", "bad"),
    "queued": ("ENREGISTRÉ, ENVOI DIFFÉRÉ", "warn"), "refused": ("IMPOSSIBLE", "bad"),
    "card_error": ("LECTURE DE LA CARTE IMPOSSIBLE", "bad"), "cancelled": ("ABANDONNÉE", "quiet"),
    "in_balance": ("CLÔTURE : TOTAUX CONCORDANTS", "good"),
    "out_of_balance": ("CLÔTURE AVEC ÉCART", "warn"), "totals": ("TOTAUX DU JOUR", "quiet"),
    "transactions": ("OPÉRATIONS DU JOUR", "quiet"), "receipt": ("TICKET RÉIMPRIMÉ", "quiet"),
    "pin_required": ("CODE SUPERVISEUR REQUIS", "warn"), "pin_refused": ("CODE REFUSÉ", "bad"),
    "confirm": ("À CONFIRMER", "warn"),
}
WAITING, SENDING, READY = "PRÉSENTEZ LA CARTE", "ENVOI AU SERVEUR…", "PRÊT"
CONFIRM_WORDS = ("o", "oui")
CLOCK_REFRESH_S = 1.0


class CashierScreen(App):
    """`hdfpay terminal run`."""

    ENABLE_COMMAND_PALETTE = False
    TITLE = "Carte Génération #HDF"
    CSS = """
    #top { height: 1; background: $panel; padding: 0 1; }
    #state { height: 3; content-align: center middle; text-style: bold; background: $panel; }
    #state.waiting { background: $warning 60%; }
    #state.sending { background: $primary 60%; }
    #state.good { background: $success 70%; }
    #state.bad { background: $error 70%; }
    #state.warn { background: $warning 70%; }
    #amount { width: 100%; text-align: center; height: 3; }
    #lines { height: 1fr; padding: 0 2; }
    #question { padding: 0 1; text-style: bold; }
    #answer { margin: 0 1; }
    """
    BINDINGS = [
        # Short words: the eight keys fit an 80-column screen.
        Binding("1", "sale", "Vente"),
        Binding("2", "void", "Annuler"),
        Binding("3", "refund", "Rembourser"),
        Binding("4", "totals", "Totaux"),
        Binding("5", "close", "Clôture"),
        Binding("6", "reprint", "Ticket"),
        Binding("7", "transactions", "Journal"),
        Binding("escape", "escape", "Abandonner", priority=True),
        Binding("q", "quit_till", "Quitter"),
    ]
    _MENU = {"sale", "void", "refund", "totals", "close", "reprint", "transactions", "quit_till"}

    def __init__(self, agent: TerminalAgent, terminal_id: str) -> None:
        super().__init__()
        self.agent = agent
        self.terminal_id = terminal_id
        self.busy = False
        self.state_word = READY
        self.shown: tuple[str, ...] = ()
        self._answer: asyncio.Future[str | None] | None = None
        self._waiting_for_card = False

    def compose(self) -> ComposeResult:
        self._top = Static(id="top")
        yield self._top
        yield Static(READY, id="state")
        yield Digits("", id="amount")
        with VerticalScroll(id="lines"):
            yield Static(id="text")
        yield Label("", id="question")
        yield Input(id="answer")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#answer").display = False
        self.query_one("#question").display = False
        self._tick()
        self.set_interval(CLOCK_REFRESH_S, self._tick)
        loop = asyncio.get_running_loop()
        # The agent speaks from the reader's thread too ("Retirez la carte…").
        self.agent.on_screen = lambda text: loop.call_soon_threadsafe(self._agent_says, text)
        if self.agent.notice:      # a card on the reader at start, a sale cut by a crash
            self._set_state("ATTENTION", "warn")
            self._show_lines(tuple(self.agent.notice.split("\n")))

    # -- what the cashier sees -------------------------------------------------------------

    def _tick(self) -> None:
        now = dt.datetime.now().astimezone()
        self._top.update(
            f"Terminal {self.terminal_id} — carte Génération #HDF    {now:%d/%m/%Y %H:%M:%S}")

    def _set_state(self, word: str, tone: str = "") -> None:
        self.state_word = word
        state = self.query_one("#state", Static)
        state.update(word)
        state.set_classes(tone)

    def _show_lines(self, lines: tuple[str, ...]) -> None:
        self.shown = lines
        self.query_one("#text", Static).update("\n".join(lines))

    def _show_amount(self, cents: int | None) -> None:
        self.query_one("#amount", Digits).update(
            "" if cents is None else format_euros(cents).replace("\u00a0", "").replace(",", "."))

    def show(self, outcome: Outcome) -> None:
        word, tone = STATE_WORDS.get(outcome.status, (outcome.status.upper(), ""))
        self._set_state(word, tone)
        self._show_lines(outcome.lines)

    def _agent_says(self, text: str) -> None:
        if text == texts.SENDING:
            self._set_state(SENDING, "sending")
        elif text in (texts.PRESENT_CARD, texts.PRESENT_CARD_FOR_REFUND):
            self._set_state(text.upper(), "waiting")
            self._show_lines(("Échap : abandonner",))
        else:
            self._show_lines((text, "Échap : abandonner"))

    # -- questions -------------------------------------------------------------------------

    async def ask(self, question: str, *, password: bool = False) -> str | None:
        """What the cashier types then Entrée; None after Échap."""
        label, field = self.query_one("#question", Label), self.query_one("#answer", Input)
        label.update(question + "   (Entrée : valider · Échap : abandonner)")
        field.password, field.value = password, ""
        label.display = field.display = True
        field.focus()
        self._answer = asyncio.get_running_loop().create_future()
        try:
            return await self._answer
        finally:
            self._answer = None
            label.display = field.display = False
            field.value = ""

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(event.value.strip())

    async def _amount(self, question: str) -> int | None:
        text = await self.ask(question)
        if not text:
            return None
        try:
            return parse_euros(text)
        except AmountError as exc:
            self.show(texts.refused(exc.cashier_text))
            return None

    async def _confirmed(self, preview: Outcome) -> bool:
        self.show(preview)
        if preview.status != "confirm":
            return False
        answer = await self.ask("Confirmer ? Tapez O puis Entrée")
        return (answer or "").lower() in CONFIRM_WORDS

    async def _with_pin(self, operation, pin_first: bool) -> Outcome | None:
        """Run `operation(pin)`, asking the supervisor's PIN first or when it is asked for."""
        pin = await self.ask("Code superviseur", password=True) if pin_first else None
        if pin_first and not pin:
            return None
        outcome = await operation(pin)
        while outcome.status == "pin_required":
            self.show(outcome)
            pin = await self.ask("Code superviseur", password=True)
            if not pin:
                return None
            outcome = await operation(pin)
        return outcome

    async def _wait_for_card(self, amount_cents: int, operation) -> Outcome:
        self._show_amount(amount_cents)
        self._waiting_for_card = True
        try:
            return await operation
        finally:
            self._waiting_for_card = False

    # -- keys ------------------------------------------------------------------------------

    def check_action(self, action: str, parameters) -> bool | None:
        """The menu is off while an operation runs: keys typed meanwhile do nothing."""
        if action in self._MENU:
            return not self.busy
        if action == "escape":
            return self.busy
        return True

    def _run(self, flow) -> None:
        async def guarded() -> None:
            self.busy = True
            self.refresh_bindings()
            try:
                await flow()
            finally:
                self.busy = False
                self.refresh_bindings()
        self.run_worker(guarded(), exclusive=True, group="operation")

    def action_escape(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(None)
        elif self._waiting_for_card:
            self.agent.cancel_tap()

    def action_sale(self) -> None:
        async def flow() -> None:
            self._show_amount(None)
            amount = await self._amount("Montant de la vente (€)")
            if amount is None:
                return
            self.show(await self._wait_for_card(amount, self.agent.sale(amount)))
        self._run(flow)

    def action_void(self) -> None:
        async def flow() -> None:
            preview = self.agent.void_preview()
            self._show_amount(preview.approved_cents or None)
            if not await self._confirmed(preview):
                return
            outcome = await self._with_pin(self.agent.void_last,
                                           pin_first=preview.details["needs_pin"])
            if outcome is not None:
                self.show(outcome)
        self._run(flow)

    def action_refund(self) -> None:
        async def flow() -> None:
            self._show_amount(None)
            rrn = await self.ask("Référence du ticket de vente (12 chiffres)")
            if not rrn:
                return
            amount = await self._amount("Montant à rembourser (€)")
            if amount is None:
                return
            pin = await self.ask("Code superviseur", password=True)
            if not pin:
                return
            self.show(await self._wait_for_card(amount, self.agent.refund(rrn, amount, pin)))
        self._run(flow)

    def action_totals(self) -> None:
        self._show_amount(None)
        self.show(self.agent.totals())

    def action_close(self) -> None:
        async def flow() -> None:
            self._show_amount(None)
            if await self._confirmed(self.agent.close_preview()):
                outcome = await self._with_pin(self.agent.close_batch, pin_first=True)
                if outcome is not None:
                    self.show(outcome)
        self._run(flow)

    def action_reprint(self) -> None:
        async def flow() -> None:
            self._show_amount(None)
            self.show(await self.agent.reprint_last())
        self._run(flow)

    def action_transactions(self) -> None:
        self._show_amount(None)
        self.show(self.agent.transactions())

    def action_quit_till(self) -> None:
        self.exit()
