"""Named values for ``classes=`` and ``top=`` (:meth:`lrpfast.Net.relevance`).

``classes`` keeps the LRP toolbox's integer codes, which file lists use: :data:`TOP1` (= -1, the
best-scoring output) and :data:`TOP5` (= -2, the five best summed). ``top`` (the layer where
relevance starts) takes a layer name, a non-negative layer index (negative ones are refused: a
silent pick from the end is too easy to get by mistake), or one of the :class:`Top` members: :data:`LAST_INNER_PRODUCT` (the default) and
:data:`LOGITS` (the layer right below the lowest Softmax). The integers -1 and -2 for ``top``,
which used to mean LOGITS and LAST_INNER_PRODUCT, still do so with a DeprecationWarning.
"""
from __future__ import annotations

import enum
import warnings
from typing import Any, Sequence, Union

__all__ = ["Classes", "TOP1", "TOP5", "Top", "LOGITS", "LAST_INNER_PRODUCT", "resolve_top",
           "ClassesArg", "TopArg", "RulesArg"]


class Classes(enum.IntEnum):
    """Class selections that depend on the scores (``classes=``)."""
    TOP1 = -1   #: the highest output of each image
    TOP5 = -2   #: the five highest outputs of each image, summed


class Top(enum.Enum):
    """Where relevance starts (``top=``), beside layer names and indices."""
    LAST_INNER_PRODUCT = "last InnerProduct layer"
    LOGITS = "layer below the lowest Softmax"

    def __repr__(self) -> str:
        return f"lrpfast.{self.name}"


#: What ``classes=`` takes: one int for all images, or per image an int or a list (summed).
ClassesArg = Union[int, Sequence[Union[int, Sequence[int]]]]
#: What ``top=`` takes: None (the default), a :class:`Top`, a layer index, a layer/blob name.
TopArg = Union[None, Top, int, str]
#: What ``rules=`` takes: a composite name, a rule, a Composite or a RelPropOpts.
RulesArg = Any

TOP1, TOP5 = Classes.TOP1, Classes.TOP5
LAST_INNER_PRODUCT, LOGITS = Top.LAST_INNER_PRODUCT, Top.LOGITS
_OLD_TOP = {-1: Top.LOGITS, -2: Top.LAST_INNER_PRODUCT}


def resolve_top(top):
    """``top`` with the deprecated integer codes -1 / -2 replaced by their :class:`Top`
    member (warning once per call site); None stays None (the default)."""
    if isinstance(top, int) and not isinstance(top, bool) and int(top) in _OLD_TOP \
            and not isinstance(top, enum.Enum):
        new = _OLD_TOP[int(top)]
        warnings.warn(f"top={int(top)} is deprecated (it clashes with classes={int(top)}); use "
                      f"top={new!r}", DeprecationWarning, stacklevel=4)
        return new
    if isinstance(top, int) and not isinstance(top, (bool, enum.Enum)) and top < 0:
        raise ValueError(f"top={top}: negative layer indices are refused (-1 and -2 are the old "
                         f"codes of lrpfast.LOGITS and lrpfast.LAST_INNER_PRODUCT); pass a layer "
                         f"name, an index >= 0, lrpfast.LOGITS or lrpfast.LAST_INNER_PRODUCT")
    return top
