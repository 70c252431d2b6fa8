from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ItemType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVICE: _ClassVar[ItemType]
    COMPONENT: _ClassVar[ItemType]
SERVICE: ItemType
COMPONENT: ItemType

class ErrorInfo(_message.Message):
    __slots__ = ("aos_code", "exit_code", "message")
    AOS_CODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    aos_code: int
    exit_code: int
    message: str
    def __init__(self, aos_code: _Optional[int] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class InstanceIdent(_message.Message):
    __slots__ = ("item_id", "subject_id", "instance", "type", "preinstalled")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PREINSTALLED_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    subject_id: str
    instance: int
    type: ItemType
    preinstalled: bool
    def __init__(self, item_id: _Optional[str] = ..., subject_id: _Optional[str] = ..., instance: _Optional[int] = ..., type: _Optional[_Union[ItemType, str]] = ..., preinstalled: _Optional[bool] = ...) -> None: ...

class ArchInfo(_message.Message):
    __slots__ = ("architecture", "variant")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    variant: str
    def __init__(self, architecture: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class OSInfo(_message.Message):
    __slots__ = ("os", "version", "features")
    OS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    os: str
    version: str
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, os: _Optional[str] = ..., version: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...
