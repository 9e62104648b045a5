"""The bundled real sample: Indian Pines (AVIRIS, 145x145x200, CC BY 3.0, Purdue). See ATTRIBUTION.txt."""

from pathlib import Path

SAMPLE_DIR = Path(__file__).parent
IMAGE = SAMPLE_DIR / "indian_pines.tif"
LABELS = SAMPLE_DIR / "indian_pines_gt.tif"
CLASS_NAMES = [
    "Alfalfa", "Corn-notill", "Corn-mintill", "Corn", "Grass-pasture", "Grass-trees", "Grass-pasture-mowed",
    "Hay-windrowed", "Oats", "Soybean-notill", "Soybean-mintill", "Soybean-clean", "Wheat", "Woods",
    "Buildings-Grass-Trees-Drives", "Stone-Steel-Towers",
]
