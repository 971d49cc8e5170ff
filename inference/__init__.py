"""FLARE22 abdominal organ segmentation runtime (numpy, SimpleITK, onnxruntime; never torch).

Axis convention, for the whole project: a volume is a numpy array or tensor laid out
``(z, y, x)`` -- slice, row, column -- which is what ``SimpleITK.GetArrayFromImage`` returns.
Network tensors add batch and channel in front: ``N x C x Z x Y x X``. "Axial" (in-plane) means
the ``(y, x)`` axes, "through-plane" means ``z``.
"""

AXES = ("z", "y", "x")
