from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_VIEW: _ClassVar[EventType]
    EVENT_TYPE_ADD_TO_CART: _ClassVar[EventType]
    EVENT_TYPE_REMOVE_FROM_CART: _ClassVar[EventType]
    EVENT_TYPE_FAVORITE: _ClassVar[EventType]
    EVENT_TYPE_PURCHASE: _ClassVar[EventType]
    EVENT_TYPE_SEARCH: _ClassVar[EventType]
    EVENT_TYPE_ERASE: _ClassVar[EventType]

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CHANNEL_WEB: _ClassVar[Channel]
    CHANNEL_MOBILE_WEB: _ClassVar[Channel]
    CHANNEL_IOS_APP: _ClassVar[Channel]
    CHANNEL_ANDROID_APP: _ClassVar[Channel]
    CHANNEL_OTHER: _ClassVar[Channel]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_VIEW: EventType
EVENT_TYPE_ADD_TO_CART: EventType
EVENT_TYPE_REMOVE_FROM_CART: EventType
EVENT_TYPE_FAVORITE: EventType
EVENT_TYPE_PURCHASE: EventType
EVENT_TYPE_SEARCH: EventType
EVENT_TYPE_ERASE: EventType
CHANNEL_UNSPECIFIED: Channel
CHANNEL_WEB: Channel
CHANNEL_MOBILE_WEB: Channel
CHANNEL_IOS_APP: Channel
CHANNEL_ANDROID_APP: Channel
CHANNEL_OTHER: Channel

class UserEvent(_message.Message):
    __slots__ = ("event_id", "user_id", "event_type", "event_time", "item_id", "category_id", "brand", "price_micros", "currency", "quantity", "session_id", "search_query", "channel")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    BRAND_FIELD_NUMBER: _ClassVar[int]
    PRICE_MICROS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEARCH_QUERY_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    event_type: EventType
    event_time: _timestamp_pb2.Timestamp
    item_id: str
    category_id: str
    brand: str
    price_micros: int
    currency: str
    quantity: int
    session_id: str
    search_query: str
    channel: Channel
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., event_type: _Optional[_Union[EventType, str]] = ..., event_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., item_id: _Optional[str] = ..., category_id: _Optional[str] = ..., brand: _Optional[str] = ..., price_micros: _Optional[int] = ..., currency: _Optional[str] = ..., quantity: _Optional[int] = ..., session_id: _Optional[str] = ..., search_query: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ...) -> None: ...
