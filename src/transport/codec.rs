//! The protobuf codec of the TokenAuthority service: prost's, except that a message that
//! does not decode (invalid UTF-8 in a string, a wrong wire type, a truncated field) is the
//! sender's mistake, `INVALID_ARGUMENT`, where prost's codec answers `INTERNAL`.
//!
//! The generated code names this codec (`codec_path` in build.rs), so the mapping holds for
//! every RPC with no change to the handlers. The generated client shares it: for our own
//! client (tests, the bench) a response that does not decode reads `INVALID_ARGUMENT` too.

use tonic::{
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    Code, Status,
};
use tonic_prost::{ProstCodec, ProstDecoder};

#[derive(Debug, Clone)]
pub(crate) struct RequestCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        RequestCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(self.0.decoder())
    }
}

#[derive(Debug)]
pub(crate) struct RequestDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // prost's decoder fails only on bytes that are not the message: its INTERNAL is
        // the sender's malformed message.
        self.0.decode(buf).map_err(|status| match status.code() {
            Code::Internal => Status::invalid_argument(format!(
                "the request message does not decode: {}",
                status.message()
            )),
            _ => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
