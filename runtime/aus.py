"""The facial action units the avatar is driven by: one vocabulary for data, training and playback.

Six OpenFace AUs, in this order, as intensities 0..5 (OpenFace's scale); the network sees them
divided by AU_SCALE. AU45 is the blink: playback generates it when the app gives no AUs.
Datasets store them as the au.csv columns `AU01_r` ... (CSV_COLUMNS).
"""
from __future__ import annotations

AU_NAMES = ("AU01", "AU04", "AU05", "AU06", "AU07", "AU45")
N_AUS = len(AU_NAMES)
CSV_COLUMNS = tuple(f"{name}_r" for name in AU_NAMES)
AU_SCALE = 5.0  # OpenFace intensities are 0..5
BLINK_AU = "AU45"
BLINK_INDEX = AU_NAMES.index(BLINK_AU)
BLINK_CSV_COLUMN = CSV_COLUMNS[BLINK_INDEX]
