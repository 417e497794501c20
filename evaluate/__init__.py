"""Scoring trained heads: metrics, the two evaluation protocols, ABAW submissions, ablations.

Importing this package stays light (no torch): the heavy modules import their own deps.
"""
