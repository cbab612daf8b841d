"""The terminal agent: the program a partner shop runs on the PC that has the NFC reader.

It reads card UIDs through PC/SC (card_reader), signs requests with AES-DUKPT future keys kept
sealed on disk (future_keys, sealed_state), guides the cashier in French, and reverses, through a
durable SQLite queue, every purchase whose answer did not arrive in time.
"""
