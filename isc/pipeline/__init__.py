"""The stages run together: ``isc-run``'s steps from download to submission (:mod:`run`; its settings
:mod:`config`, its summary :mod:`summary`, what its steps share :mod:`work`, its calibration on edited copies
:mod:`calibration`), the demo on the mini dataset (:mod:`demo`), and copies found in a user's own folders
(:mod:`find`; their groups and outputs :mod:`groups`, its defaults by model :mod:`thresholds`).

Imports: every stage; nothing imports it but the commands.
"""
