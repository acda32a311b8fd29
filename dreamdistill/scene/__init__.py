"""The 3D scene: hash-grid encoding, radiance field, background (and analytic scenes for testing)."""

from dreamdistill.scene.background import Background
from dreamdistill.scene.field import Field
from dreamdistill.scene.hashgrid import HashGrid

__all__ = ["Background", "Field", "HashGrid"]
