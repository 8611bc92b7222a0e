"""Models trained by other libraries, behind ddpm's one call signature.

Each foreign format is one module that maps the other library's process description to a
``ddpm.Diffusion`` and wraps its network so that ``model(x, t)`` returns a plain tensor; the
other library is imported only when such a model is loaded.
"""
