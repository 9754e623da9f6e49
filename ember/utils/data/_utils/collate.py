"""torch's ``_utils.collate`` path; the implementation is ``ember.utils.data._collate``."""
from ember.utils.data._collate import (  # noqa: F401
    collate, collate_float_fn, collate_int_fn, collate_numpy_array_fn, collate_numpy_scalar_fn,
    collate_str_fn, collate_tensor_fn, default_collate, default_collate_err_msg_format,
    default_collate_fn_map, default_convert, np_str_obj_array_pattern)
