"""What changed between two versions: metadata differences and a content diff by type.

:func:`compare_contents` picks the diff from the name and the bytes:

* ``json`` (``.json`` or content that parses as a JSON object/array): a structural diff,
  ``added``/``removed``/``changed`` as JSON-pointer-like paths (``/layers[id=bg]/opacity``)
  with old and new values; lists of objects that carry an ``id`` (or ``name``) are matched by
  it, so a canvas whose layers were reordered or edited reports which layers were added,
  removed or changed (``layers``). A unified text diff of the pretty-printed JSON follows.
* ``text`` (UTF-8 without NUL bytes: text and code): a unified diff (as ``diff -u``) and a
  side-by-side table of rows ``{"tag", "left_no", "left", "right_no", "right"}`` around the
  changes (unchanged stretches fold into ``{"tag": "skip", "lines"}`` rows), plus line
  counts. Texts over ``max_text_bytes`` (1 MiB) get the byte ranges instead: a line diff
  of a larger file takes seconds.
* ``image`` (Pillow, ``pip install aiofs[images]``): format, dimensions and mode of both,
  the share of pixels that changed (same dimensions) and, with ``diff_image=True``, a PNG
  that shows the changed pixels in red over a faded copy of the newer image.
* ``binary``: the changed byte ranges ``[start, end)`` (a rewritten region is one range,
  at most :data:`MAX_RANGES`), the bytes they cover, and the size difference.
"""

from __future__ import annotations

import difflib
import io
import json
import posixpath
from typing import Any

MAX_RANGES = 200
MAX_DIFF_LINES = 20000
MAX_JSON_CHANGES = 500
MAX_JSON_TEXT = 512 << 10  # pretty-printed JSON larger than this gets no line diff
RANGE_BLOCK = 4096
TEXT_EXTENSIONS = {
    ".txt", ".md", ".rst", ".csv", ".tsv", ".log", ".py", ".js", ".ts", ".tsx", ".jsx", ".css",
    ".scss", ".html", ".htm", ".xml", ".svg", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".sh",
    ".c", ".h", ".cpp", ".hpp", ".java", ".go", ".rs", ".rb", ".php", ".sql", ".swift", ".kt",
}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif"}
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
                b"MM\x00*")


def metadata_differences(a: dict, b: dict) -> dict[str, Any]:
    """Size, time, hash and author differences between two version records."""
    size_a, size_b = a.get("size"), b.get("size")
    time_a, time_b = a.get("time"), b.get("time")
    return {
        "size_change_bytes": None if size_a is None or size_b is None else size_b - size_a,
        "time_between_seconds": None if time_a is None or time_b is None else time_b - time_a,
        "hash_changed": a.get("hash") != b.get("hash"),
        "users": {"a": a.get("user"), "b": b.get("user")},
        "same_user": a.get("user") == b.get("user"),
        "descriptions": {"a": a.get("description"), "b": b.get("description")},
        "version_numbers": {"a": a.get("version_number"), "b": b.get("version_number")},
    }


def kind_of(name: str, data: bytes) -> str:
    """``json``, ``image``, ``text`` or ``binary`` for a file name and its content."""
    ext = posixpath.splitext(name)[1].lower()
    if ext in IMAGE_EXTENSIONS or data.startswith(_IMAGE_MAGIC) or \
            (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return "image"
    text = _as_text(data)
    if text is not None:
        stripped = text.lstrip()
        if ext == ".json" or stripped.startswith(("{", "[")):
            try:
                json.loads(text)
                return "json"
            except ValueError:
                pass
        return "text"
    return "binary"


def _as_text(data: bytes) -> str | None:
    if b"\x00" in data[:65536]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def compare_contents(name: str, a: bytes, b: bytes, diff_image: bool = False,
                     max_text_bytes: int = 1 << 20) -> dict[str, Any]:
    """The content diff of two versions of ``name`` (module doc)."""
    kind_a, kind_b = kind_of(name, a), kind_of(name, b)
    kind = kind_a if kind_a == kind_b else ("text" if {kind_a, kind_b} == {"json", "text"} else "binary")
    if kind in ("text", "json") and max(len(a), len(b)) > max_text_bytes:
        result = binary_diff(a, b)
        result["note"] = f"text over {max_text_bytes} bytes: byte ranges only"
        return result
    if kind == "json":
        return json_diff(a, b)
    if kind == "text":
        return text_diff(a.decode("utf-8"), b.decode("utf-8"))
    if kind == "image":
        return image_diff(a, b, diff_image=diff_image)
    return binary_diff(a, b)


# -- text ----------------------------------------------------------------------------------------


def _unified_range(start: int, stop: int) -> str:
    """A hunk range as ``diff -u`` writes it (difflib's private helper, same rules)."""
    beginning, length = start + 1, stop - start
    if length == 1:
        return str(beginning)
    if not length:
        beginning -= 1
    return f"{beginning},{length}"


def text_diff(a: str, b: str, context: int = 3) -> dict[str, Any]:
    """Unified diff, side-by-side rows and line counts of two texts (one line matcher).

    Side-by-side rows cover the changes and ``context`` lines around them; the unchanged
    stretches between are one ``{"tag": "skip", "lines": N}`` row each (as a UI folds them).
    """
    left, right = a.splitlines(), b.splitlines()
    matcher = difflib.SequenceMatcher(None, left, right, autojunk=False)
    added = removed = 0
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("insert", "replace"):
            added += j2 - j1
        if tag in ("delete", "replace"):
            removed += i2 - i1
    unified: list[str] = []
    rows: list[dict[str, Any]] = []
    previous_end = (0, 0)
    for group in matcher.get_grouped_opcodes(context):
        if len(unified) >= MAX_DIFF_LINES:
            break
        if not unified:
            unified += ["--- a", "+++ b"]
        first, last = group[0], group[-1]
        unified.append(f"@@ -{_unified_range(first[1], last[2])} "
                       f"+{_unified_range(first[3], last[4])} @@")
        if first[1] > previous_end[0]:
            rows.append({"tag": "skip", "lines": first[1] - previous_end[0],
                         "left_no": previous_end[0] + 1, "right_no": previous_end[1] + 1})
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                unified += [" " + line for line in left[i1:i2]]
            else:
                unified += ["-" + line for line in left[i1:i2]]
                unified += ["+" + line for line in right[j1:j2]]
            for k in range(max(i2 - i1, j2 - j1)):
                li, rj = i1 + k, j1 + k
                rows.append({
                    "tag": tag,
                    "left_no": li + 1 if li < i2 else None, "left": left[li] if li < i2 else None,
                    "right_no": rj + 1 if rj < j2 else None, "right": right[rj] if rj < j2 else None,
                })
        previous_end = (last[2], last[4])
    if unified and previous_end[0] < len(left):
        rows.append({"tag": "skip", "lines": len(left) - previous_end[0],
                     "left_no": previous_end[0] + 1, "right_no": previous_end[1] + 1})
    truncated = len(unified) > MAX_DIFF_LINES or len(rows) > MAX_DIFF_LINES
    return {"type": "text", "unified": "\n".join(unified[:MAX_DIFF_LINES]),
            "side_by_side": rows[:MAX_DIFF_LINES], "lines_added": added, "lines_removed": removed,
            "lines": {"a": len(left), "b": len(right)}, "identical": a == b,
            "truncated": truncated}


def side_by_side_text(rows: list[dict], width: int = 60) -> str:
    """The side-by-side rows as plain text columns (what ``aiofs diff --side-by-side`` shows)."""
    marks = {"equal": " ", "replace": "|", "insert": ">", "delete": "<"}
    lines = []
    for row in rows:
        if row["tag"] == "skip":
            lines.append(f"{'... ' + str(row['lines']) + ' unchanged lines ...':^{2 * width + 3}}")
            continue
        left = (row["left"] or "")[:width]
        right = (row["right"] or "")[:width]
        lines.append(f"{left:<{width}} {marks[row['tag']]} {right}")
    return "\n".join(lines)


# -- json ----------------------------------------------------------------------------------------


def _list_key(items: list) -> str | None:
    """The key that identifies the objects of a list (``id`` or ``name``), if all have one."""
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    for key in ("id", "uuid", "name"):
        values = [i.get(key) for i in items]
        if all(isinstance(v, (str, int)) for v in values) and len(set(values)) == len(values):
            return key
    return None


def _walk(a: Any, b: Any, path: str, out: dict[str, list], lists: dict[str, dict]) -> None:
    if sum(len(v) for v in out.values()) >= MAX_JSON_CHANGES:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            if k not in b:
                out["removed"].append({"path": f"{path}/{k}", "value": a[k]})
        for k in b:
            if k not in a:
                out["added"].append({"path": f"{path}/{k}", "value": b[k]})
            else:
                _walk(a[k], b[k], f"{path}/{k}", out, lists)
        return
    if isinstance(a, list) and isinstance(b, list):
        ka, kb = _list_key(a), _list_key(b)
        key = ka if ka == kb else (ka if not b else kb if not a else None)
        if key is not None:
            left = {i[key]: i for i in a}
            right = {i[key]: i for i in b}
            summary = {"key": key, "added": [k for k in right if k not in left],
                       "removed": [k for k in left if k not in right], "changed": [],
                       "reordered": [k for k in left if k in right] != [k for k in right if k in left]}
            for k, item in left.items():
                if k not in right:
                    out["removed"].append({"path": f"{path}[{key}={k}]", "value": item})
            for k, item in right.items():
                if k not in left:
                    out["added"].append({"path": f"{path}[{key}={k}]", "value": item})
                elif item != left[k]:
                    summary["changed"].append(k)
                    _walk(left[k], item, f"{path}[{key}={k}]", out, lists)
            lists[path or "/"] = summary
            return
        for i in range(max(len(a), len(b))):
            if i >= len(a):
                out["added"].append({"path": f"{path}[{i}]", "value": b[i]})
            elif i >= len(b):
                out["removed"].append({"path": f"{path}[{i}]", "value": a[i]})
            else:
                _walk(a[i], b[i], f"{path}[{i}]", out, lists)
        return
    if a != b or type(a) is not type(b):
        out["changed"].append({"path": path or "/", "old": a, "new": b})


def json_diff(a: bytes, b: bytes) -> dict[str, Any]:
    """Structural diff of two JSON documents (module doc), plus the text diff."""
    left, right = json.loads(a), json.loads(b)
    out: dict[str, list] = {"added": [], "removed": [], "changed": []}
    lists: dict[str, dict] = {}
    _walk(left, right, "", out, lists)
    pretty_a = pretty_b = ""
    if max(len(a), len(b)) <= MAX_JSON_TEXT:  # (pretty text is never shorter than compact)
        pretty_a = json.dumps(left, indent=2, sort_keys=True)
        pretty_b = json.dumps(right, indent=2, sort_keys=True)
    if pretty_a and max(len(pretty_a), len(pretty_b)) <= MAX_JSON_TEXT:
        pretty = text_diff(pretty_a, pretty_b)
    else:  # the structure says what changed; a line diff of a huge document adds little
        pretty = {"unified": None, "side_by_side": None, "lines_added": None,
                  "lines_removed": None}
    layers = None
    for path, summary in lists.items():
        if path.rsplit("/", 1)[-1] == "layers":
            layers = {"path": path, **summary}
            break
    return {"type": "json", **out, "lists": lists, "layers": layers,
            "identical": left == right,
            "truncated": sum(len(v) for v in out.values()) >= MAX_JSON_CHANGES,
            "unified": pretty["unified"], "side_by_side": pretty["side_by_side"],
            "lines_added": pretty["lines_added"], "lines_removed": pretty["lines_removed"]}


# -- images --------------------------------------------------------------------------------------


def image_diff(a: bytes, b: bytes, diff_image: bool = False) -> dict[str, Any]:
    """Dimensions, format, share of pixels changed and an optional diff PNG (Pillow)."""
    try:
        from PIL import Image, ImageChops
    except ImportError:
        result = binary_diff(a, b)
        result["note"] = "image comparison needs Pillow: pip install 'aiofs[images]'"
        return result
    try:
        left, right = Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b))
        left.load(), right.load()
    except Exception as exc:  # not decodable after all: compare bytes
        result = binary_diff(a, b)
        result["note"] = f"not a readable image ({exc}): byte ranges only"
        return result
    result: dict[str, Any] = {
        "type": "image",
        "a": {"format": left.format, "width": left.width, "height": left.height, "mode": left.mode},
        "b": {"format": right.format, "width": right.width, "height": right.height,
              "mode": right.mode},
        "dimensions_changed": left.size != right.size, "format_changed": left.format != right.format,
        "pixels_changed": None, "pixels_changed_ratio": None, "bounding_box": None,
    }
    if left.size == right.size:
        la, lb = left.convert("RGBA"), right.convert("RGBA")
        diff = ImageChops.difference(la, lb)
        # a pixel changed when any channel differs: max over the bands, then count non-zero
        bands = diff.split()
        mask = bands[0]
        for band in bands[1:]:
            mask = ImageChops.lighter(mask, band)
        mask = mask.point(lambda v: 255 if v else 0)
        changed = mask.histogram()[255]
        total = left.width * left.height
        result["pixels_changed"] = changed
        result["pixels_changed_ratio"] = changed / total if total else 0.0
        result["bounding_box"] = mask.getbbox()
        if diff_image:
            base = Image.blend(lb.convert("RGB"), Image.new("RGB", lb.size, "white"), 0.7)
            red = Image.new("RGB", lb.size, (255, 0, 0))
            base.paste(red, mask=mask)
            buffer = io.BytesIO()
            base.save(buffer, format="PNG")
            result["diff_image_png"] = buffer.getvalue()
    else:
        result["note"] = "dimensions differ: no pixel comparison"
    return result


# -- binary --------------------------------------------------------------------------------------


def _first_difference(a, b, start: int, end: int) -> int:
    for i in range(start, end):
        if a[i] != b[i]:
            return i
    return end


def _last_difference(a, b, start: int, end: int) -> int:
    for i in range(end - 1, start - 1, -1):
        if a[i] != b[i]:
            return i + 1
    return start


def binary_diff(a: bytes, b: bytes) -> dict[str, Any]:
    """Changed byte ranges ``[start, end)`` between two byte strings (capped).

    Blocks of :data:`RANGE_BLOCK` bytes are compared whole (fast); a run of differing
    blocks becomes one range trimmed to its first and last differing byte, so a rewritten
    region is one range even where a byte happens to keep its value. ``bytes_changed`` is
    the total length of the ranges.
    """
    ranges: list[list[int]] = []
    common = min(len(a), len(b))
    va, vb = memoryview(a), memoryview(b)
    truncated = False
    run_start = None
    for block in range(0, common, RANGE_BLOCK):
        end = min(block + RANGE_BLOCK, common)
        same = va[block:end] == vb[block:end]
        if not same and run_start is None:
            run_start = block
        if same and run_start is not None:
            ranges.append([_first_difference(a, b, run_start, block),
                           _last_difference(a, b, block - RANGE_BLOCK, block)])
            run_start = None
    if run_start is not None:
        last_block = ((common - 1) // RANGE_BLOCK) * RANGE_BLOCK
        ranges.append([_first_difference(a, b, run_start, common),
                       _last_difference(a, b, last_block, common)])
    if len(a) != len(b):
        start, stop = common, max(len(a), len(b))
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = stop
        else:
            ranges.append([start, stop])
    if len(ranges) > MAX_RANGES:
        ranges, truncated = ranges[:MAX_RANGES], True
    return {"type": "binary", "changed_ranges": ranges,
            "bytes_changed": sum(e - s for s, e in ranges),
            "size_a": len(a), "size_b": len(b), "size_change_bytes": len(b) - len(a),
            "identical": a == b, "truncated": truncated}
