//! How results become bytes in a store: [`Codec`], [`JsonCodec`].

use crate::repository::BoxError;

/// Encodes an operation's result for storage and decodes it for replay.
///
/// Encoding must succeed for every result the operation can return: a result that cannot be
/// encoded is recorded as done without it (a Finished record with no result), and its key
/// answers [`Error::Codec`](crate::Error::Codec) from then on.
pub trait Codec<R>: Send + Sync + 'static {
    /// The stored form of `value`.
    fn encode(&self, value: &R) -> Result<Vec<u8>, BoxError>;
    /// The value back from its stored form.
    fn decode(&self, bytes: &[u8]) -> Result<R, BoxError>;
}

/// JSON through `serde_json`: the default codec of [`Manager::new`](crate::Manager::new).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

impl<R> Codec<R> for JsonCodec
where
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(&self, value: &R) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(value)?)
    }

    fn decode(&self, bytes: &[u8]) -> Result<R, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// Raw bytes, stored as they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesCodec;

impl Codec<Vec<u8>> for BytesCodec {
    fn encode(&self, value: &Vec<u8>) -> Result<Vec<u8>, BoxError> {
        Ok(value.clone())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, BoxError> {
        Ok(bytes.to_vec())
    }
}
