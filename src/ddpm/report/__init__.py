"""Figures (PNG) and a stand-alone HTML report from tensors.

Matplotlib is used through its object API only (``matplotlib.figure.Figure``), never pyplot, so
importing this package sets up no global state; image grids are drawn with Pillow. Every file
is written atomically (temp file in the same folder, then ``os.replace``).
"""

from ddpm.report.chains import save_forward_strip, save_trajectory, save_trajectory_2d
from ddpm.report.html import html_table, write_html
from ddpm.report.images import default_scale, image_grid, save_image_grid, save_png, to_uint8
from ddpm.report.plots import save_bar_chain, save_per_timestep, save_scatter_2d, save_steps_curve
from ddpm.report.samples import save_array, save_samples
from ddpm.report.theory import write_theory_report

__all__ = [
    "default_scale",
    "html_table",
    "image_grid",
    "save_bar_chain",
    "save_forward_strip",
    "save_image_grid",
    "save_per_timestep",
    "save_png",
    "save_array",
    "save_samples",
    "write_theory_report",
    "save_scatter_2d",
    "save_steps_curve",
    "save_trajectory",
    "save_trajectory_2d",
    "to_uint8",
    "write_html",
]
