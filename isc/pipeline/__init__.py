"""The stages run together: ``isc-run``'s steps from download to submission (:mod:`run`), the demo on the
mini dataset (:mod:`demo`), and copies found in a user's own folders (:mod:`find`).

Imports: every stage; nothing imports it but the commands.
"""
