//! The gRPC codec of every Cairn service: prost with small per-call buffers.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// What each call's encode and decode buffer starts at, and the step it grows by. tonic
/// allocates both up front for every call (8 KiB each by default). A device's sync stream lives
/// as long as it is connected, so those two buffers were 16 KiB of central's memory per device
/// (1.6 GB at 100k devices) and 16 KiB of the agent's. A larger message still goes through: the
/// buffer grows to fit it (geometrically once it is large).
pub const CALL_BUFFER_BYTES: usize = 1024;

/// How much encoded output a stream collects before it yields to the transport (tonic's
/// default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`CALL_BUFFER_BYTES`] buffers; named in `build.rs` as the codec of the
/// generated clients and servers.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(CALL_BUFFER_BYTES, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(CALL_BUFFER_BYTES, YIELD_THRESHOLD))
    }
}
