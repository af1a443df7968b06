//! Conversions between generated bindings of the plugin interface and the host-owned types
//! of [`crate::model`], written once as macros so each user (every interface version of the
//! wasmtime host, the Spin bridge's `wit-bindgen` imports) lists only fields and variants.
//!
//! `$crate::model` is where the macros find the host-owned types, so a binding converts
//! into `simrelay_core::model::X` wherever the macro is invoked.

/// A conversion that may change the type of every nested field.
pub trait Conv<T> {
    fn conv(self) -> T;
}

macro_rules! same {
    ($($type:ty),*) => {
        $(impl Conv<$type> for $type {
            fn conv(self) -> $type {
                self
            }
        })*
    };
}
same!(String, bool, u8, u16, u32, u64, i32);

impl<A: Conv<B>, B> Conv<Vec<B>> for Vec<A> {
    fn conv(self) -> Vec<B> {
        self.into_iter().map(Conv::conv).collect()
    }
}

impl<A: Conv<B>, B> Conv<Option<B>> for Option<A> {
    fn conv(self) -> Option<B> {
        self.map(Conv::conv)
    }
}

impl<A: Conv<C>, B: Conv<D>, C, D> Conv<(C, D)> for (A, B) {
    fn conv(self) -> (C, D) {
        (self.0.conv(), self.1.conv())
    }
}

/// Records, over the fields both sides have: `both` ways, or only `into_host` for types
/// that carry variants an older interface lacks. Fields only the host type has (added by a
/// later interface version) take their defaults coming in and are dropped going out.
#[macro_export]
macro_rules! records {
    (into_host: $($wit:path => $model:ident { $($field:ident),* $(,)? } $(+ { $($extra:ident),* })?)*) => {$(
        impl $crate::convert::Conv<$crate::model::$model> for $wit {
            fn conv(self) -> $crate::model::$model {
                $crate::model::$model {
                    $($field: $crate::convert::Conv::conv(self.$field),)*
                    $($($extra: Default::default(),)*)?
                }
            }
        }
    )*};
    (both: $($wit:path => $model:ident { $($field:ident),* $(,)? } $(+ { $($extra:ident),* })?)*) => {$(
        $crate::records!(into_host: $wit => $model { $($field),* } $(+ { $($extra),* })?);
        impl $crate::convert::Conv<$wit> for $crate::model::$model {
            fn conv(self) -> $wit {
                $wit {
                    $($field: $crate::convert::Conv::conv(self.$field),)*
                }
            }
        }
    )*};
}

/// Enums and variants, variant by variant: `both` ways, or only `into_host` for types the
/// host never hands to a plugin of that version (its own has variants the old one lacks).
#[macro_export]
macro_rules! variants {
    (into_host: $($wit:path => $model:ident { $($variant:ident $(($payload:ident))?),* $(,)? })*) => {$(
        impl $crate::convert::Conv<$crate::model::$model> for $wit {
            fn conv(self) -> $crate::model::$model {
                match self {
                    $(Self::$variant $(($payload))? => $crate::model::$model::$variant
                        $(($crate::convert::Conv::conv($payload)))?,)*
                }
            }
        }
    )*};
    (both: $($wit:path => $model:ident { $($variant:ident $(($payload:ident))?),* $(,)? })*) => {$(
        $crate::variants!(into_host: $wit => $model { $($variant $(($payload))?),* });
        impl $crate::convert::Conv<$wit> for $crate::model::$model {
            fn conv(self) -> $wit {
                match self {
                    $(Self::$variant $(($payload))? => <$wit>::$variant
                        $(($crate::convert::Conv::conv($payload)))?,)*
                }
            }
        }
    )*};
}
