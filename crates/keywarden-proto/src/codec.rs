//! The gRPC codec: prost's encoder, and a decoder that calls a message that
//! does not decode what it is, the caller's fault (INVALID_ARGUMENT naming
//! the problem) rather than INTERNAL, as tonic's default does. A server
//! that wants to record such refusals (the daemon audits them) installs a
//! hook with [`on_malformed`]; the decoder does not know the caller (the
//! transport has not handed the request to a handler yet), so the hook gets
//! the error text only.

use std::marker::PhantomData;
use std::sync::OnceLock;

use prost::Message;
use tonic::codec::{DecodeBuf, Decoder};
use tonic::Status;

/// What a server does with the description of a message that fails to
/// decode (the daemon audits it).
pub type MalformedHook = Box<dyn Fn(&str) + Send + Sync>;

static MALFORMED: OnceLock<MalformedHook> = OnceLock::new();

/// Installs the hook called with the description of every message that
/// fails to decode. The first call wins; later calls are ignored.
pub fn on_malformed(hook: MalformedHook) {
    let _ = MALFORMED.set(hook);
}

/// Used by the generated services and clients (see `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(PhantomData)
    }
}

/// Decodes one message; malformed input is INVALID_ARGUMENT.
#[derive(Debug, Clone, Copy)]
pub struct MessageDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            let what = format!("the message does not decode as {}: {e}", short_type::<U>());
            if let Some(hook) = MALFORMED.get() {
                hook(&what);
            }
            Status::invalid_argument(format!("request: {what}"))
        })
    }
}

fn short_type<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}
