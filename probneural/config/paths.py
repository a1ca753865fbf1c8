"""Where the Hydra YAML lives: ``configs/`` at the top of the source checkout."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
