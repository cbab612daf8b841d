"""Tickets on the shop's ESC/POS receipt printer, through python-escpos (the usual USB thermal
printers appear as a device file, /dev/usb/lp0). A printer out of paper or unplugged never fails
the sale: the ticket stays in the journal and the cashier reprints it.
"""

from __future__ import annotations

import logging

log = logging.getLogger("hdfpay.terminal")


class PrinterError(RuntimeError):
    """The ticket was not printed (no device, no paper, no permission)."""


class EscposFilePrinter:
    def __init__(self, device_file: str) -> None:
        self.device_file = device_file

    def print_receipt(self, text: str) -> None:
        """Blocking: call it from a thread."""
        from escpos.printer import File      # loaded only where a printer is configured

        printer = File(self.device_file)
        try:
            printer.text(text)
            printer.cut()
        except Exception as exc:              # escpos raises several kinds, OSError among them
            log.warning("receipt not printed on %s (%s)", self.device_file, type(exc).__name__)
            raise PrinterError(type(exc).__name__) from exc
        finally:
            try:
                printer.close()
            except Exception:                  # a device that never opened has nothing to close
                pass
