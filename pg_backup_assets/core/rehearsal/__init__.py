"""Restore rehearsals: restore the offsite copy for real, verify it, measure RTO and RPO."""
