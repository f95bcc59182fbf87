"""Dataset readers: lists of lazy `Example` records (images are decoded later by `decode.py`).

Readers (all return `list[Example]` in a deterministic order):
  * `voc_devkit`     - PASCAL VOC devkit (LOST/official CorLoc protocol, section 5.1).
  * `coco20k`        - COCO train2014 restricted to the shipped COCO20k list.
  * `tfds_detection` - prepared tfds `voc/2007`, `voc/2012`, `coco/2014` (read without TensorFlow).
  * `saliency_folder`- ECSSD, DUTS-TE, DUT-OMRON, CUB (object segmentation, section 6).
  * `image_folder`   - any folder of images, optional VOC-XML / COCO-JSON boxes or masks.

Boxes are float xyxy in pixels of the stored image (no EXIF rotation), converted as the official
code does: VOC (xmin - 1, ymin - 1, xmax, ymax); COCO int(round(.)) of [x, y, x + w, y + h].
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import io
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
from absl import logging

from spectral_jax.data import decode

__all__ = [
    "Example",
    "TfdsRef",
    "IMAGE_EXTENSIONS",
    "TfdsNotPreparedError",
    "read_list",
    "coco20k_filenames",
    "parse_voc_xml",
    "voc_devkit",
    "coco20k",
    "tfds_detection",
    "examples_from_tfds_records",
    "saliency_folder",
    "image_folder",
    "load_image",
    "load_gt_mask",
]

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
)
# A folder holding this entry is a spectral_jax workdir: never listed as input.
WORKDIR_MARKER = ".spectral_jax"


@dataclasses.dataclass(frozen=True)
class TfdsRef:
  """Where a tfds record lives: the prepared builder directory, the split and the index."""

  builder_dir: str
  split: str
  index: int


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
  """One image of a dataset, not yet decoded.

  Attributes:
    id: output stem (file stem; folder-relative path with '/' -> '__' for `image_folder`).
    path: image file, or None for a tfds record (`tfds_ref`).
    image_hw: (H, W) of the stored image when known without decoding, else None.
    boxes: [n, 4] float64 xyxy GT boxes in pixels, or None when the dataset has none.
    labels: class name per box, or None.
    mask_path: GT mask file, or None.
    center_crop: score after cropping prediction and GT mask to the centred min-side square
      (CUB protocol). Images are NOT cropped for the model: the official code extracts
      features from the full image and crops only at evaluation.
    apply_exif: honour EXIF orientation when decoding (False where annotations exist).
    tfds_ref: record location for tfds datasets.
    gt_error: set when the image's annotation exists but cannot be read (scored as skipped).
    pixels: the decoded image, RGB uint8 [H, W, 3], for an image given in memory (the Python
      API, an HTTP upload): never written to disk or re-encoded; `path` is then None and `name`
      is what errors call it.
    name: how errors and logs name an in-memory image (e.g. 'images[2]').
  """

  id: str
  path: str | None
  image_hw: tuple[int, int] | None = None
  boxes: np.ndarray | None = None
  labels: tuple[str, ...] | None = None
  mask_path: str | None = None
  center_crop: bool = False
  apply_exif: bool = True
  tfds_ref: TfdsRef | None = None
  gt_error: str | None = None  # why the ground truth of an annotated image is unusable
  pixels: np.ndarray | None = None
  name: str | None = None

  @property
  def label(self) -> str:
    """How logs and errors name the image: its file, its in-memory name, else its id."""
    return str(self.path or self.name or self.id)

  @property
  def gt_boxes(self) -> np.ndarray | None:
    """Alias of `boxes`."""
    return self.boxes


# ----------------------------------------------------------------------------------------------
# Shipped lists
# ----------------------------------------------------------------------------------------------


def read_list(name: str) -> list[str]:
  """Non-empty lines of a list shipped in `spectral_jax/data/` (e.g. 'coco_20k_filenames.txt')."""
  text = importlib.resources.files("spectral_jax.data").joinpath(name).read_text()
  return [line.strip() for line in text.splitlines() if line.strip()]


def coco20k_filenames() -> list[str]:
  """The 19,817 COCO20k file names (basename, e.g. 'COCO_train2014_000000560992.jpg')."""
  return [os.path.basename(line) for line in read_list("coco_20k_filenames.txt")]


# ----------------------------------------------------------------------------------------------
# PASCAL VOC
# ----------------------------------------------------------------------------------------------


def _voc_int(text: str | None, what: str, xml_path: PathLike) -> int:
  if text is None:
    raise ValueError(f"{xml_path}: missing <{what}>")
  try:
    return int(text)
  except ValueError:
    # LOST's int(str) would crash on '273.5'; truncate like int(float) and say so.
    logging.warning("%s: non-integer <%s> %r truncated to an integer", xml_path, what, text)
    return int(float(text))


def parse_voc_xml(xml_path: PathLike, no_hard: bool = False) -> dict[str, Any]:
  """Parses a VOC annotation: {'filename', 'image_hw', 'boxes' [n,4] float64, 'labels'}.

  Boxes follow LOST: (xmin - 1, ymin - 1, xmax, ymax) from the 1-based inclusive integers.
  With `no_hard`, objects with truncated == '1' or difficult == '1' are dropped.
  """
  try:
    root = ET.parse(xml_path).getroot()
  except ET.ParseError as e:
    raise ValueError(f"{xml_path}: malformed VOC annotation XML ({e})") from e
  size = root.find("size")
  image_hw = None
  if size is not None and size.findtext("height") and size.findtext("width"):
    image_hw = (int(float(size.findtext("height"))), int(float(size.findtext("width"))))
  boxes, labels = [], []
  for obj in root.findall("object"):
    hard = (obj.findtext("truncated") or "").strip() == "1" or (
        obj.findtext("difficult") or ""
    ).strip() == "1"
    if no_hard and hard:
      continue
    bb = obj.find("bndbox")
    if bb is None:
      raise ValueError(f"{xml_path}: <object> without <bndbox>")
    x1, y1, x2, y2 = (
        _voc_int(bb.findtext(k), k, xml_path) for k in ("xmin", "ymin", "xmax", "ymax")
    )
    boxes.append([x1 - 1, y1 - 1, x2, y2])
    labels.append((obj.findtext("name") or "").strip())
  return {
      "filename": (root.findtext("filename") or "").strip(),
      "image_hw": image_hw,
      "boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
      "labels": tuple(labels),
  }


def _find_voc_year_dir(root: Path, year: str) -> Path:
  candidates = [root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root]
  for c in candidates:
    if (c / "JPEGImages").is_dir() and (c / "Annotations").is_dir():
      return c
  raise FileNotFoundError(
      f"no VOC{year} devkit under {root}: looked for JPEGImages/ and Annotations/ in "
      + ", ".join(str(c) for c in candidates)
  )


def voc_devkit(
    root: PathLike, year: str | int, image_set: str = "trainval", no_hard: bool = False
) -> list[Example]:
  """VOC detection examples of `ImageSets/Main/<image_set>.txt`, in list order.

  `root` may be the folder holding VOCdevkit/, VOCdevkit/ itself or VOC<year>/.
  `no_hard` drops truncated/difficult boxes and then images left without a box (LOST
  `--no_hard`); by default every image and box is kept (README protocol).
  """
  year = str(year)
  base = _find_voc_year_dir(Path(root), year)
  list_path = base / "ImageSets" / "Main" / f"{image_set}.txt"
  if not list_path.is_file():
    raise FileNotFoundError(f"VOC image-set list not found: {list_path}")
  ids = [line.split()[0] for line in list_path.read_text().splitlines() if line.strip()]
  examples, skipped = [], 0
  for image_id in ids:
    xml_path = base / "Annotations" / f"{image_id}.xml"
    if not xml_path.is_file():
      raise FileNotFoundError(f"VOC annotation not found: {xml_path}")
    try:
      ann = parse_voc_xml(xml_path, no_hard=no_hard)
    except ValueError as e:  # one bad annotation is not scored; the image still runs
      logging.warning("%s", e)
      examples.append(
          Example(
              id=image_id,
              path=str(base / "JPEGImages" / f"{image_id}.jpg"),
              apply_exif=False,
              gt_error=str(e),
          )
      )
      continue
    if no_hard and len(ann["boxes"]) == 0:
      skipped += 1
      continue
    examples.append(
        Example(
            id=image_id,
            path=str(base / "JPEGImages" / f"{image_id}.jpg"),
            image_hw=ann["image_hw"],
            boxes=ann["boxes"],
            labels=ann["labels"],
            apply_exif=False,
        )
    )
  if skipped:
    logging.info(
        "VOC%s %s: %d images without non-hard boxes skipped (--no_hard)", year, image_set, skipped
    )
  logging.info("VOC%s %s: %d examples from %s", year, image_set, len(examples), base)
  return examples


# ----------------------------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------------------------


def _coco_box(bbox: Sequence[float]) -> list[float]:
  x, y, w, h = (float(v) for v in bbox)
  return [float(int(round(v))) for v in (x, y, x + w, y + h)]  # Python round: half to even


def _coco_index(
    annotations_json: PathLike,
) -> tuple[dict[str, dict], dict[int, list[dict]], dict[int, str]]:
  """file_name -> image record, image id -> annotations (file order), category id -> name."""
  with open(annotations_json) as f:
    data = json.load(f)
  by_name = {}
  for im in data.get("images", []):
    by_name[im["file_name"]] = im
    by_name.setdefault(os.path.basename(im["file_name"]), im)
  anns: dict[int, list[dict]] = {}
  for a in data.get("annotations", []):
    anns.setdefault(a["image_id"], []).append(a)
  cats = {c["id"]: c.get("name", str(c["id"])) for c in data.get("categories", [])}
  return by_name, anns, cats


def _coco_gt(anns: Iterable[dict], cats: Mapping[int, str]) -> tuple[np.ndarray, tuple[str, ...]]:
  boxes, labels = [], []
  for a in anns:
    if a.get("iscrowd", 0) == 1:  # LOST removes crowd boxes
      continue
    boxes.append(_coco_box(a["bbox"]))
    labels.append(cats.get(a.get("category_id"), str(a.get("category_id"))))
  return np.asarray(boxes, np.float64).reshape(-1, 4), tuple(labels)


_COCO_JSON_NAMES = ("instances_train2014.json", "instances_train2014_sel20k.json")


def _find_coco_json(root: Path, image_dir: Path) -> Path:
  """Standard places of the train2014 instances JSON around the image folder."""
  candidates = [
      base / sub / name
      for base in dict.fromkeys((root, image_dir.parent, image_dir.parent.parent))
      for sub in ("annotations", "")
      for name in _COCO_JSON_NAMES
  ]
  for c in candidates:
    if c.is_file():
      return c
  raise FileNotFoundError(
      "COCO20k needs the train2014 instances JSON (annotations/instances_train2014.json from "
      "annotations_trainval2014.zip); pass it explicitly or put it in one of: "
      + ", ".join(str(c) for c in candidates[:4])
  )


def coco20k(
    root: PathLike, annotations_json: PathLike | None = None, filenames: Sequence[str] | None = None
) -> list[Example]:
  """COCO20k examples (order of the shipped list) with boxes from `annotations_json`.

  `root` may hold train2014/ (or images/train2014/) or be train2014/ itself.
  `annotations_json` is `instances_train2014.json` (or a subset containing the 20k images);
  None looks for annotations/instances_train2014.json next to the images.
  Boxes: [x, y, x + w, y + h] each int(round(.)); crowd boxes dropped. List entries missing
  from the JSON are skipped with a warning.
  """
  root = Path(root)
  image_dir = next(
      (d for d in (root / "train2014", root / "images" / "train2014") if d.is_dir()), root
  )
  names = coco20k_filenames() if filenames is None else [os.path.basename(n) for n in filenames]
  if annotations_json is None:
    annotations_json = _find_coco_json(root, image_dir)
  by_name, anns, cats = _coco_index(annotations_json)
  examples, missing = [], []
  for name in names:
    im = by_name.get(name)
    if im is None:
      missing.append(name)
      continue
    boxes, labels = _coco_gt(anns.get(im["id"], []), cats)
    examples.append(
        Example(
            id=Path(name).stem,
            path=str(image_dir / name),
            image_hw=(int(im["height"]), int(im["width"])),
            boxes=boxes,
            labels=labels,
            apply_exif=False,
        )
    )
  if missing:
    if not examples:
      raise ValueError(f"none of the {len(names)} COCO20k images is in {annotations_json}")
    logging.warning(
        "COCO20k: %d listed images are not in %s (skipped), e.g. %s",
        len(missing),
        annotations_json,
        missing[:3],
    )
  logging.info("COCO20k: %d examples from %s", len(examples), image_dir)
  return examples


# ----------------------------------------------------------------------------------------------
# tfds (prepared array_record datasets, read without TensorFlow)
# ----------------------------------------------------------------------------------------------

TFDS_DETECTION = ("voc/2007", "voc/2012", "coco/2014")


class TfdsNotPreparedError(FileNotFoundError):
  """The requested tfds dataset has not been prepared in `data_dir`."""


def _tfds_data_dir(data_dir: PathLike | None) -> Path:
  if data_dir is not None:
    return Path(data_dir).expanduser()
  return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def _version_key(v: str) -> tuple[int, ...]:
  return tuple(int(x) for x in v.split("."))


def _find_builder_dir(name: str, data_dir: Path) -> Path | None:
  """Newest `<data_dir>/<ds>/<config>/<x.y.z>/` holding dataset_info.json, or None."""
  base = data_dir.joinpath(*name.split("/"))
  if not base.is_dir():
    return None
  versions = [
      d.name
      for d in base.iterdir()
      if re.fullmatch(r"\d+\.\d+\.\d+", d.name) and (d / "dataset_info.json").is_file()
  ]
  return base / max(versions, key=_version_key) if versions else None


def _not_prepared_message(name: str, data_dir: Path) -> str:
  return (
      f"tfds dataset {name!r} is not prepared in {data_dir}. Prepare it once (this step needs "
      f"TensorFlow: pip install tensorflow-cpu), e.g.\n"
      f"  python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
      f"data_dir='{data_dir}').download_and_prepare(file_format='array_record')\"\n"
      f"or: tfds build {name} --data_dir={data_dir} --file_format=array_record\n"
      f"Reading it afterwards does not need TensorFlow."
  )


@functools.lru_cache(maxsize=8)
def _tfds_source(builder_dir: str, split: str) -> Any:
  """Random-access data source of a prepared split; images stay encoded (SkipDecoding)."""
  import tensorflow_datasets as tfds  # heavy import, only when tfds is used

  builder = tfds.builder_from_directory(builder_dir)
  file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
  if file_format is not None and str(file_format) != "array_record":
    raise ValueError(
        f"{builder_dir} is stored as {file_format}; random access without TensorFlow needs "
        "array_record: re-prepare with download_and_prepare(file_format='array_record')"
    )
  return builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})


def _text(v: Any) -> str:
  if isinstance(v, (bytes, np.bytes_)):
    return bytes(v).decode("utf-8")
  if isinstance(v, np.ndarray):
    return _text(v.item())
  return str(v)


def _image_hw(image: Any) -> tuple[int, int]:
  """(H, W) of an encoded image (header only) or of an already decoded array."""
  if isinstance(image, np.ndarray) and image.dtype != object:
    return int(image.shape[0]), int(image.shape[1])
  from PIL import Image

  with Image.open(io.BytesIO(bytes(image))) as im:
    return im.height, im.width


def _write_once(path: Path, data: bytes) -> Path:
  """Writes `data` to `path` unless a file of the same size is there (atomic rename)."""
  if path.is_file() and path.stat().st_size == len(data):
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_bytes(data)
  os.replace(tmp, path)
  return path


def _iter_records(records: Any, chunk: int = 256) -> Iterable[tuple[int, Any]]:
  """(index, record) pairs; batched `__getitems__` lets array_record read in parallel."""
  n = len(records)
  getitems = getattr(type(records), "__getitems__", None)
  for start in range(0, n, chunk):
    idx = list(range(start, min(n, start + chunk)))
    batch = getitems(records, idx) if getitems is not None else [records[i] for i in idx]
    yield from zip(idx, batch)


def examples_from_tfds_records(
    records: Any,
    name: str,
    *,
    builder_dir: str | None = None,
    split: str = "",
    keep_filenames: set[str] | None = None,
    no_hard: bool = False,
    cache_dir: Path | None = None,
) -> list[Example]:
  """Converts tfds detection records (an indexable data source) into Examples.

  Normalised tfds boxes (ymin, xmin, ymax, xmax) become pixel xyxy:
    * VOC: tfds stores the 1-based XML ints divided by the XML size, so the ints are recovered
      by rounding and the LOST shift (xmin - 1, ymin - 1) is applied - identical to
      `voc_devkit` boxes (non-integer XML coordinates, very rare, round instead of truncate).
    * COCO: x*W etc. are float32-rounded before int(round(.)), so a box edge at exactly .5 px
      can land 1 px away from the JSON path; CorLoc may therefore differ very slightly.
  `keep_filenames` filters by `image/filename` (COCO20k); `no_hard` as in `voc_devkit`;
  `cache_dir` receives the encoded image files (see `tfds_detection`).
  """
  is_voc = name.startswith("voc")
  examples, skipped_hard = [], 0
  for i, rec in _iter_records(records):
    filename = _text(rec["image/filename"])
    if keep_filenames is not None and filename not in keep_filenames:
      continue
    h, w = _image_hw(rec["image"])
    objs = rec["objects"]
    bbox = np.asarray(objs["bbox"], np.float64).reshape(-1, 4)
    keep = np.ones(len(bbox), bool)
    if is_voc:
      if no_hard:
        hard = np.asarray(objs["is_truncated"], bool).reshape(-1) | np.asarray(
            objs["is_difficult"], bool
        ).reshape(-1)
        keep &= ~hard
      # Recover the XML integers, then LOST's shift.
      xyxy = np.rint(bbox[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float64))
      xyxy[:, :2] -= 1.0
    else:
      keep &= ~np.asarray(objs["is_crowd"], bool).reshape(-1)
      xyxy = bbox[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float64)
      xyxy = np.array([[float(int(round(v))) for v in row] for row in xyxy], np.float64).reshape(
          -1, 4
      )
    boxes = xyxy[keep]
    if is_voc and no_hard and len(boxes) == 0:
      skipped_hard += 1
      continue
    ref = TfdsRef(builder_dir, split, i) if builder_dir is not None else None
    path = None
    if cache_dir is not None and isinstance(rec["image"], (bytes, np.bytes_)):
      path = str(_write_once(Path(cache_dir) / os.path.basename(filename), bytes(rec["image"])))
    examples.append(
        Example(
            id=Path(filename).stem,
            path=path,
            image_hw=(h, w),
            boxes=boxes,
            apply_exif=False,
            tfds_ref=ref,
        )
    )
  if skipped_hard:
    logging.info("%s: %d images without non-hard boxes skipped (no_hard)", name, skipped_hard)
  return examples


def tfds_detection(
    name: str,
    split: str,
    data_dir: PathLike | None = None,
    cache_dir: PathLike | None = None,
    *,
    coco20k_only: bool = True,
    no_hard: bool = False,
) -> list[Example]:
  """Examples from a prepared tfds detection dataset ('voc/2007', 'voc/2012', 'coco/2014').

  `split` may join splits with '+': VOC CorLoc (devkit trainval) is 'train+validation'.
  Examples are sorted by id.

  Works without TensorFlow: the prepared directory is opened with
  `tfds.builder_from_directory(...).as_data_source(split)` (array_record random access) and
  images are kept encoded until `load_image`. With `cache_dir`, the encoded images (the
  original JPEG bytes) are also written once to `cache_dir/<ds>_<config>/<split>/<file name>`
  and `Example.path` points there, so path-based decoding works too. For 'coco/2014' the
  records are filtered to the
  COCO20k list (`coco20k_only`, use split='train') and crowd boxes are dropped. Listing reads
  every record of the split once (COCO train: ~83k records, image bytes included).

  Raises:
    TfdsNotPreparedError: with the command that prepares the dataset (needs TensorFlow).
  """
  if name not in TFDS_DETECTION:
    raise ValueError(f"unsupported tfds dataset {name!r}; choose one of {TFDS_DETECTION}")
  root = _tfds_data_dir(data_dir)
  builder_dir = _find_builder_dir(name, root)
  if builder_dir is None:
    raise TfdsNotPreparedError(_not_prepared_message(name, root))
  keep = set(coco20k_filenames()) if (name == "coco/2014" and coco20k_only) else None
  examples = []
  for part in split.split("+"):  # e.g. VOC CorLoc uses 'train+validation' (= devkit trainval)
    source = _tfds_source(str(builder_dir), part.strip())
    examples += examples_from_tfds_records(
        source,
        name,
        builder_dir=str(builder_dir),
        split=part.strip(),
        keep_filenames=keep,
        no_hard=no_hard,
        cache_dir=None
        if cache_dir is None
        else Path(cache_dir) / name.replace("/", "_") / part.strip(),
    )
  examples.sort(key=lambda e: e.id)  # tfds stores records shuffled; list them like the devkit
  logging.info("tfds %s[%s]: %d examples from %s", name, split, len(examples), builder_dir)
  return examples


# ----------------------------------------------------------------------------------------------
# Saliency / object-segmentation sets
# ----------------------------------------------------------------------------------------------

# name -> (candidate sub-folders of root, images dir, masks dir, centre crop)
_SALIENCY_LAYOUTS: dict[str, tuple[tuple[str, ...], str, str, bool]] = {
    "ECSSD": (("", "ECSSD"), "images", "ground_truth_mask", False),
    "DUTS-TE": (("", "DUTS-TE", "DUTS/DUTS-TE"), "DUTS-TE-Image", "DUTS-TE-Mask", False),
    "DUT-OMRON": (("", "DUT-OMRON", "DUT_OMRON"), "DUT-OMRON-image", "pixelwiseGT-new-PNG", False),
    "CUB": (("", "CUB_200_2011", "CUB"), "test_images", "test_segmentations", True),
}


def _list_images(folder: Path, exclude: Sequence[PathLike] = ()) -> list[Path]:
  """Image files under `folder` (recursive, symlinked folders followed once), sorted by path.

  Hidden files and folders are skipped, and so are spectral_jax workdirs (``exclude`` and any
  folder holding ``WORKDIR_MARKER``), so outputs written inside `folder` never become inputs.
  Files with other extensions are counted in one log line.
  """
  excluded = {os.path.realpath(p) for p in exclude}
  seen_dirs: set[tuple[int, int]] = set()
  images, others = [], {}
  for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
    st = os.stat(dirpath)
    if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop or a second link to a folder
      dirnames[:] = []
      continue
    seen_dirs.add((st.st_dev, st.st_ino))
    if WORKDIR_MARKER in dirnames or os.path.realpath(dirpath) in excluded:
      dirnames[:] = []
      continue
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for name in filenames:
      if name.startswith("."):
        continue
      suffix = os.path.splitext(name)[1].lower()
      if suffix in IMAGE_EXTENSIONS:
        images.append(Path(dirpath) / name)
      else:
        others[suffix or "(none)"] = others.get(suffix or "(none)", 0) + 1
  if others:
    logging.warning(
        "%s: %d files that are not images were ignored (%s)",
        folder,
        sum(others.values()),
        ", ".join(f"{k}: {v}" for k, v in sorted(others.items())),
    )
  return sorted(images)


def _by_stem(paths: Sequence[Path], what: str) -> dict[str, Path]:
  out: dict[str, Path] = {}
  for p in paths:
    if p.stem in out:
      raise ValueError(f"two {what} files share the stem {p.stem!r}: {out[p.stem]} and {p}")
    out[p.stem] = p
  return out


def _pair_masks(images: Sequence[Path], masks_dir: Path, what: str) -> dict[str, Path]:
  """Stem -> mask path for `images`; logs unpaired files on both sides."""
  masks = _by_stem(_list_images(masks_dir), f"{what} mask")
  stems = {p.stem for p in images}
  no_mask = [p.name for p in images if p.stem not in masks]
  no_image = sorted(s for s in masks if s not in stems)
  if no_mask:
    logging.warning(
        "%s: %d images without a mask in %s, e.g. %s", what, len(no_mask), masks_dir, no_mask[:3]
    )
  if no_image:
    logging.warning("%s: %d masks without an image, e.g. %s", what, len(no_image), no_image[:3])
  return masks


def saliency_folder(name: str, root: PathLike, center_crop: bool | None = None) -> list[Example]:
  """Image/mask pairs of ECSSD, DUTS-TE, DUT-OMRON or CUB, paired by file stem.

  Layouts (under `root`, or under root/<dataset folder> as in the official config):
    ECSSD: images/, ground_truth_mask/;  DUTS-TE: DUTS-TE-Image/, DUTS-TE-Mask/;
    DUT-OMRON: DUT-OMRON-image/, pixelwiseGT-new-PNG/;
    CUB: test_images/, test_segmentations/ (class sub-folders allowed).
  Images without a mask are dropped (logged). `center_crop` defaults to True for CUB only.
  The official code pairs sorted lists by position; pairing by stem is the same when the
  folders are complete and safe when they are not.
  """
  if name not in _SALIENCY_LAYOUTS:
    raise ValueError(
        f"unknown saliency dataset {name!r}; choose one of {sorted(_SALIENCY_LAYOUTS)}"
    )
  prefixes, img_sub, mask_sub, crop_default = _SALIENCY_LAYOUTS[name]
  root = Path(root)
  tried = []
  for prefix in prefixes:
    base = root / prefix if prefix else root
    if (base / img_sub).is_dir() and (base / mask_sub).is_dir():
      break
    tried.append(str(base / img_sub))
  else:
    raise FileNotFoundError(f"{name}: no {img_sub}/ and {mask_sub}/ found; tried {tried}")
  crop = crop_default if center_crop is None else center_crop
  images = _list_images(base / img_sub)
  _by_stem(images, f"{name} image")
  masks = _pair_masks(images, base / mask_sub, name)
  examples = [
      Example(
          id=p.stem, path=str(p), mask_path=str(masks[p.stem]), center_crop=crop, apply_exif=False
      )
      for p in images
      if p.stem in masks
  ]
  if not examples:
    raise ValueError(f"{name}: no image/mask pairs under {base}")
  logging.info("%s: %d image/mask pairs from %s", name, len(examples), base)
  return examples


# ----------------------------------------------------------------------------------------------
# Any folder
# ----------------------------------------------------------------------------------------------


def _folder_id(path: Path, root: Path) -> str:
  return path.relative_to(root).with_suffix("").as_posix().replace("/", "__")


def image_folder(
    root: PathLike,
    boxes: PathLike | None = None,
    masks_dir: PathLike | None = None,
    exclude: Sequence[PathLike] = (),
) -> list[Example]:
  """Every image under `root` (see `IMAGE_EXTENSIONS`; recursive, sorted by path).

  Args:
    root: folder of images, or one image file. Example ids are the relative paths without
      suffix, '/' -> '__'. Hidden entries and spectral_jax workdirs are skipped.
    boxes: None, a folder of VOC XML files (matched by image stem; LOST conversion) or a COCO
      JSON file (matched by file name, relative path or basename; int(round(.)), no crowd).
      Images without an annotation get an empty [0, 4] box array (logged).
    masks_dir: folder of GT masks matched by image stem.
    exclude: folders never listed (e.g. the run's workdir).
  EXIF orientation is applied only when no boxes or masks are given (annotations refer to
  the stored pixel grid).
  """
  root = Path(root).expanduser()
  if root.is_file():  # a single image: its own one-image dataset, named by its stem
    images, root = [root], root.parent
  elif not root.is_dir():
    raise FileNotFoundError(f"image folder not found: {root}")
  else:
    images = _list_images(root, exclude)
  if masks_dir is not None:
    masks_dir = Path(masks_dir)
    masks_abs = masks_dir.resolve()
    images = [
        p for p in images if masks_abs not in p.resolve().parents
    ]  # masks may live under root
  if not images:
    raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")

  box_of: dict[Path, tuple[np.ndarray, tuple[str, ...], tuple[int, int] | None]] = {}
  gt_errors: dict[Path, str] = {}
  if boxes is not None:
    bpath = Path(boxes)
    missing = []
    if bpath.is_dir():
      for p in images:
        xml = bpath / f"{p.stem}.xml"
        if xml.is_file():
          try:
            ann = parse_voc_xml(xml)
          except ValueError as e:  # scored as skipped; the image still runs
            logging.warning("%s", e)
            gt_errors[p] = str(e)
            continue
          box_of[p] = (ann["boxes"], ann["labels"], ann["image_hw"])
        else:
          missing.append(p.name)
    elif bpath.suffix.lower() == ".json":
      by_name, anns, cats = _coco_index(bpath)
      for p in images:
        im = by_name.get(p.relative_to(root).as_posix()) or by_name.get(p.name)
        if im is None:
          missing.append(p.name)
          continue
        b, lab = _coco_gt(anns.get(im["id"], []), cats)
        box_of[p] = (b, lab, (int(im["height"]), int(im["width"])))
    else:
      raise ValueError(f"boxes must be a folder of VOC XML files or a COCO .json file, got {bpath}")
    if missing:
      logging.warning(
          "%s: %d images without annotations in %s, e.g. %s", root, len(missing), bpath, missing[:3]
      )

  masks = _pair_masks(images, masks_dir, str(root)) if masks_dir is not None else {}
  annotated = boxes is not None or masks_dir is not None
  examples = []
  for p in images:
    b, lab, hw = box_of.get(p, (None, None, None))
    if boxes is not None and b is None and p not in gt_errors:
      b, lab = np.zeros((0, 4), np.float64), ()
    m = masks.get(p.stem)
    examples.append(
        Example(
            id=_folder_id(p, root),
            path=str(p),
            image_hw=hw,
            boxes=b,
            labels=lab,
            mask_path=str(m) if m is not None else None,
            apply_exif=not annotated,
            gt_error=gt_errors.get(p),
        )
    )
  logging.info("%s: %d images", root, len(examples))
  return examples


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_image(
    example: Example, *, min_side: int = 1, max_pixels: int = decode.DEFAULT_MAX_PIXELS
) -> np.ndarray:
  """Decodes an example's image to RGB uint8 [H, W, 3], honouring `apply_exif` and tfds records.

  Never cropped (`Example.center_crop` applies at scoring time, see `decode.center_crop_square`).
  """
  if example.pixels is not None:  # decoded already: only the size limits apply
    return decode.check_pixels(
        example.pixels, example.name or example.id, min_side=min_side, max_pixels=max_pixels
    )
  kw = dict(min_side=min_side, max_pixels=max_pixels, apply_exif=example.apply_exif)
  if example.path is not None:
    return decode.load_rgb(example.path, name=example.name or "", **kw)
  if example.tfds_ref is not None:
    ref = example.tfds_ref
    data = _tfds_source(ref.builder_dir, ref.split)[ref.index]["image"]
    return decode.decode_rgb(
        data, f"{ref.builder_dir}[{ref.split}][{ref.index}] ({example.id})", **kw
    )
  raise ValueError(f"example {example.id!r} has neither pixels, a path nor a tfds record")


def load_gt_mask(example: Example) -> np.ndarray:
  """Decodes an example's GT mask to bool [H, W] (full size; crop at scoring time)."""
  if example.mask_path is None:
    raise ValueError(f"example {example.id!r} has no mask")
  return decode.load_mask(example.mask_path)
