"""TokenCut's bilateral-solver refinement (Barron & Poole 2016), equal to the official code.

``methods_protocol.md`` §2.5, in float64 numpy: a 5-D bilateral grid (x, y, luma, 2 chroma),
bistochastised [1 2 1] blur, and 25 iterations of Jacobi-preconditioned CG started from each
vertex's mean target (scipy's ``cg`` algorithm; the official run always hits the 25-iteration
cap, so the solution is NOT converged and the iteration count matters).

Output: the continuous solution ŷ at every pixel — what the official evaluation scores as
"TokenCut + BS" — and the mask ``ŷ > 0.5``. The official post-processing (hole filling,
"second-largest label") and ``get_saliency.py``'s IoU < 0.5 flip are deliberately NOT
implemented: the flip multiplies a boolean mask by −1 and so empties masks instead of
inverting them, and the evaluation never scores the post-processed mask.
"""

from __future__ import annotations

import numpy as np

__all__ = ['RGB_TO_YUV', 'BilateralGrid', 'bistochastize', 'pcg', 'solve']

RGB_TO_YUV = np.array(
  [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)
YUV_OFFSET = np.array([0.0, 128.0, 128.0])


def rgb_to_yuv(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] → float64 [H, W, 3]. The official tensordot, unchanged: colours on an
  exact bin edge fall on one side or the other by its float rounding."""
  return np.tensordot(image, RGB_TO_YUV, ([2], [1])) + YUV_OFFSET


class BilateralGrid:
  """Splat/slice/blur operators of the official grid.

  Attributes:
    idx: [H·W] vertex of each pixel; vertices: [nv, 5] int grid coordinates (x, y, luma, u, v)
    in the official (hash) order; nvertices; neighbours: [10, nv] vertex index of each vertex
    shifted by ∓1 in each of the 5 dimensions (−1 where that is not a vertex).
  """

  def __init__(self, image: np.ndarray, sigma_spatial=16, sigma_luma=16, sigma_chroma=8):
    image = np.asarray(image, np.uint8)
    h, w = image.shape[:2]
    yuv = rgb_to_yuv(image)
    iy, ix = np.mgrid[:h, :w]
    # astype(int) truncates toward zero, as the official (all values are >= 0 here).
    coords = np.dstack(
      (
        (ix / sigma_spatial).astype(int),
        (iy / sigma_spatial).astype(int),
        (yuv[..., 0] / sigma_luma).astype(int),
        (yuv[..., 1:] / sigma_chroma).astype(int),
      )
    ).reshape(-1, 5)
    # The official hash is base 255 (coordinates < 254, i.e. images under 4,064 px a side);
    # a mixed radix of each dimension's max + 2 orders vertices the same way (both are
    # lexicographic in v, u, luma, y, x), so the official order is kept where it applies,
    # and any size works. A shift of ±1 never lands on another vertex (digits stay < base).
    bases = coords.max(0).astype(np.float64) + 2
    if np.prod(bases) >= 2.0**53:
      raise ValueError(f'image {(h, w)} too large for the bilateral grid hash')
    hash_vec = np.concatenate([[1.0], np.cumprod(bases[:-1])])
    self.shape = (h, w)
    self.npixels = h * w
    hashes, first, self.idx = np.unique(coords @ hash_vec, return_index=True, return_inverse=True)
    self.idx = self.idx.ravel()
    unique = coords[first]
    self.vertices = unique
    self.nvertices = len(hashes)
    nbs = []
    for d in range(5):
      for offset in (-1, 1):
        shifted = unique.copy()
        shifted[:, d] += offset
        nh = shifted @ hash_vec
        pos = np.clip(np.searchsorted(hashes, nh), 0, len(hashes) - 1)
        nbs.append(np.where(hashes[pos] == nh, pos, -1))
    self.neighbours = np.stack(nbs)

  def splat(self, x: np.ndarray) -> np.ndarray:
    """[H·W] → [nv]: sum over each vertex's pixels."""
    return np.bincount(self.idx, weights=x, minlength=self.nvertices)

  def slice(self, y: np.ndarray) -> np.ndarray:
    """[nv] → [H·W]: each pixel takes its vertex's value."""
    return y[self.idx]

  def blur(self, x: np.ndarray) -> np.ndarray:
    """[nv] → [nv]: 10·x plus the existing ±1 neighbours in every dimension."""
    out = 10.0 * x
    for nb in self.neighbours:
      out = out + np.where(nb >= 0, x[nb], 0.0)
    return out


def bistochastize(grid: BilateralGrid, maxiter: int = 10) -> tuple[np.ndarray, np.ndarray]:
  """Official bistochastisation: returns (m [nv], n [nv])."""
  m = grid.splat(np.ones(grid.npixels))
  n = np.ones(grid.nvertices)
  for _ in range(maxiter):
    n = np.sqrt(n * m / grid.blur(n))
  return n * grid.blur(n), n


def pcg(matvec, b, x0, inv_diag, maxiter=25, rtol=1e-5) -> tuple[np.ndarray, int]:
  """Jacobi-preconditioned CG, scipy.sparse.linalg.cg's algorithm (≥ 1.12): stops when
  ‖r‖ < rtol·‖b‖, else after ``maxiter`` iterations. Returns (x, iterations run)."""
  x = np.array(x0, np.float64)
  atol = rtol * np.linalg.norm(b)
  r = b - matvec(x) if x.any() else b.copy()
  rho_prev, p = None, None
  for it in range(maxiter):
    if np.linalg.norm(r) < atol:
      return x, it
    z = inv_diag * r
    rho = np.dot(r, z)
    p = z.copy() if it == 0 else p * (rho / rho_prev) + z
    q = matvec(p)
    alpha = rho / np.dot(p, q)
    x += alpha * p
    r -= alpha * q
    rho_prev = rho
  return x, maxiter


def solve(
  image: np.ndarray,
  target: np.ndarray,
  sigma_spatial: float = 16,
  sigma_luma: float = 16,
  sigma_chroma: float = 8,
  lam: float = 256.0,
  confidence: float = 0.999,
  a_diag_min: float = 1e-5,
  cg_tol: float = 1e-5,
  cg_maxiter: int = 25,
) -> tuple[np.ndarray, np.ndarray]:
  """TokenCut + BS.

  Args:
    image: uint8 [H, W, 3] RGB, the original (unresized) image.
    target: [H, W] the unrefined TokenCut mask (bool or 0/1; values > 1 such as 0/255 are
      NOT rescaled — pass ``mask > 0``).
    sigma_spatial, sigma_luma, sigma_chroma: grid cell sizes (the README's 16, 16, 8; the
      official function defaults 24/4/4 are not what the published numbers use).
    lam, confidence, a_diag_min, cg_tol, cg_maxiter: the official fixed values.

  Returns:
    output float64 [H, W] (continuous ŷ, roughly in [0, 1]) and mask bool [H, W] = output > 0.5.
    No hole filling, component selection or flip (see the module docstring).
  """
  image = np.asarray(image)
  h, w = image.shape[:2]
  t = np.asarray(target, np.float64).reshape(-1)
  if t.size != h * w:
    raise ValueError(f'target {np.shape(target)} does not match image {(h, w)}')
  grid = BilateralGrid(image, sigma_spatial, sigma_luma, sigma_chroma)
  m, n = bistochastize(grid)
  c = np.full(h * w, confidence)
  c_splat = grid.splat(c)
  b = grid.splat(t * c)

  def matvec(y):
    return lam * (m * y - n * grid.blur(n * y)) + c_splat * y

  # diag(n B̃ n) = 10 n² (the neighbour matrices have no diagonal).
  a_diag = np.maximum(lam * (m - 10.0 * n * n) + c_splat, a_diag_min)
  y, _ = pcg(matvec, b, b / c_splat, 1.0 / a_diag, cg_maxiter, cg_tol)
  out = grid.slice(y).reshape(h, w)
  return out, out > 0.5
