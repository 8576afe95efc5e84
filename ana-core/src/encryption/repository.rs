//! [`Encrypted`]: a store whose results are sealed under a [`Keyring`].

use std::fmt;
use std::sync::{Arc, OnceLock};

use super::keyring::Keyring;
use super::nonce::NonceSource;
use crate::record::TrackedOperation;
use crate::repository::{
    Claim, ClaimRequest, Completion, Failure, IdempotencyRepository, Lease, RecordId,
    RepositoryError,
};

/// Any store, its results encrypted: AES-256-GCM under the [`Keyring`]'s current key, the
/// record's identity as associated data.
///
/// `complete` seals the encoded result before the store sees it; `claim` and `get` open the
/// result of the record they return. Nothing else changes: statuses, deadlines, fingerprints,
/// error messages and the claim's atomicity are the inner store's. A result that does not open
/// (a wrong or missing key, bytes changed or moved from another record) is
/// [`RepositoryError::Undecryptable`]: the record stays Finished, never replayed and never run
/// again, and nothing opened is ever written back.
///
/// ```
/// use ana_core::encryption::{EncryptionKey, Encrypted, Keyring};
/// use ana_core::{operation, IdempotencyRepository, Manager, MemoryRepository, MemorySession};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryRepository::new();
/// let keyring = Keyring::new(EncryptionKey::new(0, &[7; 32]));
/// let manager: Manager<&str, String, MemorySession> =
///     Manager::new(Encrypted::new(store.clone(), keyring));
///
/// let pay = operation("pay", "k1", "10 EUR", |_ctx: MemorySession| async {
///     Ok::<_, std::io::Error>("card 4242 charged".to_owned())
/// });
/// assert_eq!(manager.call(pay).await?, "card 4242 charged");
///
/// // The store itself holds ciphertext only.
/// let stored = store.get("pay", "k1").await?.and_then(|record| record.result);
/// assert!(!stored.unwrap_or_default().windows(4).any(|w| w == b"4242"));
/// # Ok(()) }
/// ```
pub struct Encrypted<S> {
    inner: S,
    keyring: Arc<Keyring>,
    /// Made at the first seal (its keys come from the OS); shared by clones.
    nonces: Arc<OnceLock<NonceSource>>,
}

impl<S> Encrypted<S> {
    /// `inner`, its results sealed under `keyring` (a [`Keyring`], or an `Arc` of one to share
    /// it between stores).
    pub fn new(inner: S, keyring: impl Into<Arc<Keyring>>) -> Self {
        Self {
            inner,
            keyring: keyring.into(),
            nonces: Arc::default(),
        }
    }

    /// The inner store, which sees sealed results only.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The keyring.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The inner store.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// `plain` sealed for the holder of `lease` on the record `id`; `None` when the system's
    /// random number generator failed to give the nonce source its keys.
    fn seal(&self, id: RecordId<'_>, lease: Lease, plain: &[u8]) -> Option<Vec<u8>> {
        let nonces = match self.nonces.get() {
            Some(nonces) => nonces,
            None => {
                let made = NonceSource::new().ok()?;
                self.nonces.get_or_init(|| made)
            }
        };
        self.keyring.seal(id, &nonces.nonce(id, lease), plain).ok()
    }

    /// Opens the result of `record`, in place.
    fn open(&self, record: &mut TrackedOperation) -> Result<(), RepositoryError> {
        let Some(result) = record.result.as_mut() else {
            return Ok(());
        };
        let id = RecordId::new(&record.target, &record.key);
        self.keyring
            .decrypt_in_place(id, result)
            .map_err(|source| RepositoryError::Undecryptable {
                target: record.target.clone(),
                key: record.key.clone(),
                source,
            })
    }
}

impl<S: Clone> Clone for Encrypted<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            keyring: Arc::clone(&self.keyring),
            nonces: Arc::clone(&self.nonces),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Encrypted<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encrypted")
            .field("inner", &self.inner)
            .field("keyring", &self.keyring)
            .finish()
    }
}

impl<S: IdempotencyRepository> IdempotencyRepository for Encrypted<S> {
    type Session = S::Session;

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn claim(
        &self,
        request: &ClaimRequest<'_>,
    ) -> Result<Claim<Self::Session>, RepositoryError> {
        let mut claim = self.inner.claim(request).await?;
        if let Claim::Existing { record, .. } = &mut claim {
            self.open(record)?;
        }
        Ok(claim)
    }

    fn renew(
        &self,
        id: RecordId<'_>,
        lease: Lease,
        lease_for: std::time::Duration,
    ) -> impl std::future::Future<Output = Result<crate::Renewal, RepositoryError>> + Send {
        self.inner.renew(id, lease, lease_for)
    }

    fn watch(&self, id: RecordId<'_>) -> crate::Watch {
        self.inner.watch(id)
    }

    async fn complete(
        &self,
        session: Self::Session,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Result<Completion, RepositoryError> {
        // A result that cannot be sealed (the system's RNG failed) is recorded like one the
        // codec refused, Finished without a result: the work is done, and must not run again.
        let sealed = result.and_then(|plain| self.seal(id, lease, plain));
        self.inner
            .complete(session, id, lease, sealed.as_deref())
            .await
    }

    fn fail(
        &self,
        session: Self::Session,
        id: RecordId<'_>,
        lease: Lease,
        failure: Failure<'_>,
    ) -> impl Future<Output = Result<Completion, RepositoryError>> + Send {
        self.inner.fail(session, id, lease, failure)
    }

    async fn get(
        &self,
        target: &str,
        key: &str,
    ) -> Result<Option<TrackedOperation>, RepositoryError> {
        let mut record = self.inner.get(target, key).await?;
        if let Some(record) = &mut record {
            self.open(record)?;
        }
        Ok(record)
    }
}
