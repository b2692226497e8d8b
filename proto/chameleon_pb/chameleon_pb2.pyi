from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RequestRejection(_message.Message):
    __slots__ = ("request_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    reason: str
    def __init__(self, request_id: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Headroom(_message.Message):
    __slots__ = ("rank", "free_device_bytes", "total_device_bytes", "pool_pages_total", "pool_pages_used", "kv_pages_used", "adapter_pages_used", "page_bytes", "resident_adapters", "resident_bytes", "pool_pages_allocated", "pool_allocated_bytes", "segment_pages", "free_source")
    RANK_FIELD_NUMBER: _ClassVar[int]
    FREE_DEVICE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DEVICE_BYTES_FIELD_NUMBER: _ClassVar[int]
    POOL_PAGES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    POOL_PAGES_USED_FIELD_NUMBER: _ClassVar[int]
    KV_PAGES_USED_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_PAGES_USED_FIELD_NUMBER: _ClassVar[int]
    PAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    POOL_PAGES_ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    POOL_ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_PAGES_FIELD_NUMBER: _ClassVar[int]
    FREE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    rank: int
    free_device_bytes: int
    total_device_bytes: int
    pool_pages_total: int
    pool_pages_used: int
    kv_pages_used: int
    adapter_pages_used: int
    page_bytes: int
    resident_adapters: int
    resident_bytes: int
    pool_pages_allocated: int
    pool_allocated_bytes: int
    segment_pages: int
    free_source: str
    def __init__(self, rank: _Optional[int] = ..., free_device_bytes: _Optional[int] = ..., total_device_bytes: _Optional[int] = ..., pool_pages_total: _Optional[int] = ..., pool_pages_used: _Optional[int] = ..., kv_pages_used: _Optional[int] = ..., adapter_pages_used: _Optional[int] = ..., page_bytes: _Optional[int] = ..., resident_adapters: _Optional[int] = ..., resident_bytes: _Optional[int] = ..., pool_pages_allocated: _Optional[int] = ..., pool_allocated_bytes: _Optional[int] = ..., segment_pages: _Optional[int] = ..., free_source: _Optional[str] = ...) -> None: ...

class ResizePoolRequest(_message.Message):
    __slots__ = ("num_pages",)
    NUM_PAGES_FIELD_NUMBER: _ClassVar[int]
    num_pages: int
    def __init__(self, num_pages: _Optional[int] = ...) -> None: ...

class ResizePoolResponse(_message.Message):
    __slots__ = ("num_pages", "released_bytes", "allocated_bytes", "resize_ns", "headroom")
    NUM_PAGES_FIELD_NUMBER: _ClassVar[int]
    RELEASED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESIZE_NS_FIELD_NUMBER: _ClassVar[int]
    HEADROOM_FIELD_NUMBER: _ClassVar[int]
    num_pages: int
    released_bytes: int
    allocated_bytes: int
    resize_ns: int
    headroom: Headroom
    def __init__(self, num_pages: _Optional[int] = ..., released_bytes: _Optional[int] = ..., allocated_bytes: _Optional[int] = ..., resize_ns: _Optional[int] = ..., headroom: _Optional[_Union[Headroom, _Mapping]] = ...) -> None: ...

class PoolLayout(_message.Message):
    __slots__ = ("page_bytes", "num_pages", "block_size", "kv_bytes_per_token", "activation_reserve_bytes", "weight_bytes")
    PAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_PAGES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_RESERVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    page_bytes: int
    num_pages: int
    block_size: int
    kv_bytes_per_token: int
    activation_reserve_bytes: int
    weight_bytes: int
    def __init__(self, page_bytes: _Optional[int] = ..., num_pages: _Optional[int] = ..., block_size: _Optional[int] = ..., kv_bytes_per_token: _Optional[int] = ..., activation_reserve_bytes: _Optional[int] = ..., weight_bytes: _Optional[int] = ...) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("rank", "world_size", "model_type", "hidden_size", "num_layers", "max_position_embeddings", "weight_bytes", "target_modules", "adapter_dtype")
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITION_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_DTYPE_FIELD_NUMBER: _ClassVar[int]
    rank: int
    world_size: int
    model_type: str
    hidden_size: int
    num_layers: int
    max_position_embeddings: int
    weight_bytes: int
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    adapter_dtype: str
    def __init__(self, rank: _Optional[int] = ..., world_size: _Optional[int] = ..., model_type: _Optional[str] = ..., hidden_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., max_position_embeddings: _Optional[int] = ..., weight_bytes: _Optional[int] = ..., target_modules: _Optional[_Iterable[str]] = ..., adapter_dtype: _Optional[str] = ...) -> None: ...

class AdapterInfo(_message.Message):
    __slots__ = ("adapter_id", "rank", "bytes", "pages", "resident", "target_modules", "alpha", "dtype")
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    rank: int
    bytes: int
    pages: int
    resident: bool
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    alpha: float
    dtype: str
    def __init__(self, adapter_id: _Optional[str] = ..., rank: _Optional[int] = ..., bytes: _Optional[int] = ..., pages: _Optional[int] = ..., resident: _Optional[bool] = ..., target_modules: _Optional[_Iterable[str]] = ..., alpha: _Optional[float] = ..., dtype: _Optional[str] = ...) -> None: ...

class LoadAdapterRequest(_message.Message):
    __slots__ = ("adapter_id", "pages")
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    pages: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, adapter_id: _Optional[str] = ..., pages: _Optional[_Iterable[int]] = ...) -> None: ...

class LoadAdapterResponse(_message.Message):
    __slots__ = ("adapter", "load_ns", "headroom")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    LOAD_NS_FIELD_NUMBER: _ClassVar[int]
    HEADROOM_FIELD_NUMBER: _ClassVar[int]
    adapter: AdapterInfo
    load_ns: int
    headroom: Headroom
    def __init__(self, adapter: _Optional[_Union[AdapterInfo, _Mapping]] = ..., load_ns: _Optional[int] = ..., headroom: _Optional[_Union[Headroom, _Mapping]] = ...) -> None: ...

class OffloadAdapterRequest(_message.Message):
    __slots__ = ("adapter_id",)
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    def __init__(self, adapter_id: _Optional[str] = ...) -> None: ...

class OffloadAdapterResponse(_message.Message):
    __slots__ = ("was_resident", "headroom")
    WAS_RESIDENT_FIELD_NUMBER: _ClassVar[int]
    HEADROOM_FIELD_NUMBER: _ClassVar[int]
    was_resident: bool
    headroom: Headroom
    def __init__(self, was_resident: _Optional[bool] = ..., headroom: _Optional[_Union[Headroom, _Mapping]] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterInfo]
    def __init__(self, adapters: _Optional[_Iterable[_Union[AdapterInfo, _Mapping]]] = ...) -> None: ...

class HeadroomRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChooserExtras(_message.Message):
    __slots__ = ("length_penalty_start", "length_penalty_decay")
    LENGTH_PENALTY_START_FIELD_NUMBER: _ClassVar[int]
    LENGTH_PENALTY_DECAY_FIELD_NUMBER: _ClassVar[int]
    length_penalty_start: int
    length_penalty_decay: float
    def __init__(self, length_penalty_start: _Optional[int] = ..., length_penalty_decay: _Optional[float] = ...) -> None: ...

class StoppingExtras(_message.Message):
    __slots__ = ("min_new_tokens",)
    MIN_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    min_new_tokens: int
    def __init__(self, min_new_tokens: _Optional[int] = ...) -> None: ...
