"""The policy: fold events into per-user state and decide send requests against dated rules.

Pure: no I/O, no clock reads, no environment reads (tests/unit/test_layout.py checks the imports).

    fold        events → UserState / PageState        decide      state + request + now → Decision
    rulebook    Meta's dated rules (rules/meta.json)  pages       the pages file
    transition  fold + decide, shared by every shell and by windowgate.offline (all in memory)
    timeconst, timestamps   time arithmetic on epoch ms (Meta's clock, never the machine's)
"""
