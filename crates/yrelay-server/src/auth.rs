//! Who may open which room, and with which role: JWT verification, the admin key, minting.
//!
//! # Modes
//! - **none** — neither `auth.jwt_secret` nor `auth.jwt_public_key` is set. Every request is
//!   [`Identity::anonymous_owner`], whatever token it carries. For a relay that sits behind
//!   something else that authenticates.
//! - **jwt** — every WebSocket request needs a JSON Web Token granting its room. The header's
//!   `alg` picks the key, and each key is used with its own algorithm only:
//!
//!   | configured | accepted `alg` |
//!   |---|---|
//!   | `jwt_secret` | `HS256` |
//!   | `jwt_public_key` holding an RSA public key (2048–4096 bits) | `RS256` |
//!   | `jwt_public_key` holding an Ed25519 public key | `EdDSA` |
//!
//!   Both may be set; then `HS256` and the key's algorithm are accepted. Any other `alg`
//!   (`none`, `HS384`, `RS512`, …) is refused before any cryptography runs, which is what rules
//!   out algorithm confusion (e.g. an `HS256` token keyed with the RSA public key's PEM).
//!
//! # Claims
//! | claim | | meaning |
//! |---|---|---|
//! | `sub` | required, non-empty string | who; becomes [`Identity::subject`] |
//! | `exp` | required, NumericDate | refused from `exp` on (RFC 7519), give or take `leeway_secs` |
//! | `nbf` | optional, NumericDate | refused before `nbf`, give or take `leeway_secs` |
//! | `iat` | optional, NumericDate | informative only |
//! | `room` | required, string or non-empty array of strings | each entry is an exact room name, or a prefix pattern ending in `*`: `"team-a/*"` matches every room whose name starts with `team-a/`; `"*"` matches every room. Only a trailing `*` is special. |
//! | `role` | required | `"viewer"`, `"editor"` or `"owner"` (see [`Role`]) |
//!
//! Other claims (`aud`, `iss`, anything custom) are ignored.
//!
//! # Where a token travels
//! [`find_token`]: `?token=` in the query, else `Authorization: Bearer`, else a
//! `Sec-WebSocket-Protocol` value shaped like a JWT (the way browsers can send one).
//!
//! # Admin key
//! `auth.admin_key` guards the admin API (`Authorization: Bearer <admin key>`), compared in
//! constant time. Without it the admin API is off: [`Authenticator::check_admin`] answers
//! [`AuthError::AdminDisabled`] (403) to every request.
//!
//! # Nothing secret leaks
//! Secrets are held in [`Secret`], whose `Debug`/`Display` print `***`. No error message
//! quotes a token, a secret or a key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderMap, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest token accepted, in bytes. Longer ones are [`AuthError::Malformed`] without being
/// decoded: a cheap bound on the work one request can cause.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Shortest `auth.jwt_secret` accepted: RFC 7518 §3.2 requires an HS256 key of at least 256 bits.
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Shortest `auth.admin_key` accepted.
pub const MIN_ADMIN_KEY_BYTES: usize = 16;
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest `auth.leeway_secs` accepted: clock skew is seconds, an hour is already generous.
pub const MAX_LEEWAY_SECS: u64 = 3600;

/// A secret string (JWT secret, admin key) whose `Debug`/`Display` never show the value.
///
/// `==` is an ordinary comparison, fine for configuration; request checks go through
/// [`Authenticator::check_admin`], which compares in constant time.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret value itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The `[auth]` section of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 secret, at least [`MIN_JWT_SECRET_BYTES`] bytes. Setting it turns JWT mode on.
    pub jwt_secret: Option<Secret>,
    /// PEM file with an RS256 (RSA, `PUBLIC KEY` or `RSA PUBLIC KEY`) or EdDSA (Ed25519,
    /// `PUBLIC KEY`) public key. Setting it turns JWT mode on. Both this and `jwt_secret` may
    /// be set: then HS256 tokens and tokens of the key's algorithm are accepted. Read once at
    /// startup.
    pub jwt_public_key: Option<PathBuf>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`, at most [`MAX_LEEWAY_SECS`].
    /// Default 0.
    pub leeway_secs: u64,
    /// Key for the admin API (`Authorization: Bearer <key>`), at least [`MIN_ADMIN_KEY_BYTES`]
    /// bytes. No default: without it the admin API refuses everything with 403
    /// ([`AuthError::AdminDisabled`]).
    pub admin_key: Option<Secret>,
    /// Whether viewers may send awareness (presence: cursors, names). Default true.
    pub viewer_awareness: bool,
    /// Longest lifetime of a token minted by the admin API, in seconds. Default 86400 (a day).
    pub max_token_ttl_secs: u64,
    /// Lets mode none (no secret, no key) listen on a non-loopback address. Default false.
    /// Not read here: config validation enforces it.
    pub allow_unauthenticated: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_public_key: None,
            leeway_secs: 0,
            admin_key: None,
            viewer_awareness: true,
            max_token_ttl_secs: 86_400,
            allow_unauthenticated: false,
        }
    }
}

impl AuthSettings {
    /// Whether these settings turn JWT mode on (a secret or a public key is set).
    pub fn jwt_enabled(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key.is_some()
    }
}

/// What a token lets its bearer do in a room. Ordered: `Viewer < Editor < Owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the document; sends no updates (awareness per `auth.viewer_awareness`).
    Viewer,
    /// Reads and writes the document.
    Editor,
    /// Everything an editor may, plus owner-only operations on the room.
    Owner,
}

impl Role {
    /// Whether this role may send document updates.
    pub fn can_write(self) -> bool {
        self >= Role::Editor
    }

    /// The role's name as in tokens and config: `"viewer"`, `"editor"`, `"owner"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Owner => "owner",
        }
    }

    /// Parses a `role` claim: exactly one of the three lowercase names.
    fn from_claim(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a request is, once authorized for one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub` claim; `"anonymous"` when auth is off.
    pub subject: Arc<str>,
    /// What the request may do in the room.
    pub role: Role,
    /// The token's `exp`, in Unix seconds; `None` when auth is off.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// What mode `none` grants: subject `"anonymous"`, [`Role::Owner`], no expiry.
    pub fn anonymous_owner() -> Self {
        Self {
            subject: Arc::from("anonymous"),
            role: Role::Owner,
            expires_at: None,
        }
    }

    /// `Ok` if this identity's role is at least `needed`, else
    /// [`AuthError::InsufficientRole`].
    pub fn require(&self, needed: Role) -> Result<(), AuthError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(AuthError::InsufficientRole {
                needed,
                have: self.role,
            })
        }
    }
}

/// Why a request was refused. Each variant has a stable metric [`label`](Self::label) and an
/// HTTP [`status`](Self::status). Messages never quote the token or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request carries no token.
    #[error("no token: send one as ?token=, an `Authorization: Bearer` header, or a Sec-WebSocket-Protocol value")]
    Missing,
    /// The token is not a well-formed JWT (shape, base64url, JSON, or too long).
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// The signature does not verify with the configured key.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// The token's `alg` is not one this server accepts (including `none`).
    #[error("the token is signed with an algorithm this server does not accept")]
    WrongAlgorithm,
    /// The token's `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// The token's `nbf` is still in the future.
    #[error("the token is not valid yet (its nbf is in the future)")]
    NotYetValid,
    /// A required claim is absent (or null).
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or value.
    #[error("the token's `{0}` claim is invalid")]
    InvalidClaim(&'static str),
    /// The token is valid but does not grant this room.
    #[error("the token does not grant access to this room")]
    WrongRoom,
    /// The identity's role is too low for the operation.
    #[error("role {have} may not do this: it needs {needed}")]
    InsufficientRole {
        /// The least role the operation needs.
        needed: Role,
        /// The role the request has.
        have: Role,
    },
    /// An admin request without `Authorization: Bearer <key>`.
    #[error("the admin API needs an `Authorization: Bearer <admin key>` header")]
    AdminKeyRequired,
    /// An admin request with the wrong key.
    #[error("the admin key is wrong")]
    AdminKeyInvalid,
    /// The admin API is off because no `auth.admin_key` is configured.
    #[error("the admin API is disabled: no auth.admin_key is configured")]
    AdminDisabled,
}

impl AuthError {
    /// The HTTP status to answer with: 401 when credentials are missing, invalid or expired;
    /// 403 when they are valid but do not allow the request (or the admin API is off).
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::WrongRoom
            | AuthError::InsufficientRole { .. }
            | AuthError::AdminDisabled => StatusCode::FORBIDDEN,
            AuthError::Missing
            | AuthError::Malformed
            | AuthError::BadSignature
            | AuthError::WrongAlgorithm
            | AuthError::Expired
            | AuthError::NotYetValid
            | AuthError::MissingClaim(_)
            | AuthError::InvalidClaim(_)
            | AuthError::AdminKeyRequired
            | AuthError::AdminKeyInvalid => StatusCode::UNAUTHORIZED,
        }
    }

    /// A stable label for metrics and logs (snake_case; the claim name is not included).
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::WrongAlgorithm => "wrong_algorithm",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::InvalidClaim(_) => "invalid_claim",
            AuthError::WrongRoom => "wrong_room",
            AuthError::InsufficientRole { .. } => "insufficient_role",
            AuthError::AdminKeyRequired => "admin_key_required",
            AuthError::AdminKeyInvalid => "admin_key_invalid",
            AuthError::AdminDisabled => "admin_disabled",
        }
    }
}

/// Why the `[auth]` settings cannot be used (found at startup).
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A secret is set but empty.
    #[error("{field} is empty")]
    EmptySecret {
        /// The setting, e.g. `auth.jwt_secret`.
        field: &'static str,
    },
    /// A secret is shorter than its minimum.
    #[error("{field} is too short: it needs at least {min} bytes")]
    SecretTooShort {
        /// The setting, e.g. `auth.jwt_secret`.
        field: &'static str,
        /// The minimum length in bytes.
        min: usize,
    },
    /// The public key file cannot be read.
    #[error("cannot read auth.jwt_public_key {}: {source}", path.display())]
    ReadKey {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no PEM block.
    #[error("auth.jwt_public_key {} is not a PEM file", path.display())]
    NotPem {
        /// The configured path.
        path: PathBuf,
    },
    /// The file holds a private key; the relay only needs (and must only get) the public half.
    #[error("auth.jwt_public_key {} holds a private key; give the relay only the public key (openssl pkey -in <private.pem> -pubout)", path.display())]
    PrivateKey {
        /// The configured path.
        path: PathBuf,
    },
    /// The file holds a certificate rather than a bare public key.
    #[error("auth.jwt_public_key {} holds a certificate; extract its public key (openssl x509 -in <cert.pem> -pubkey -noout)", path.display())]
    Certificate {
        /// The configured path.
        path: PathBuf,
    },
    /// The key is of a kind the relay does not verify with.
    #[error("auth.jwt_public_key {}: {reason}", path.display())]
    UnsupportedKey {
        /// The configured path.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The RSA key is too small to be safe.
    #[error("auth.jwt_public_key {}: an RSA key of {bits} bits is too weak; at least {min} bits are needed", path.display())]
    WeakRsaKey {
        /// The configured path.
        path: PathBuf,
        /// The key's modulus size.
        bits: usize,
        /// The minimum.
        min: usize,
    },
    /// `auth.leeway_secs` is implausibly large.
    #[error("auth.leeway_secs is too large: at most {max} seconds")]
    LeewayTooLarge {
        /// The maximum.
        max: u64,
    },
    /// `auth.max_token_ttl_secs` is 0, so no token could ever be minted.
    #[error("auth.max_token_ttl_secs must be at least 1")]
    ZeroMaxTokenTtl,
}

/// Why a token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// Minting needs `auth.jwt_secret` (HS256); a public key can only verify.
    #[error("minting tokens needs auth.jwt_secret (HS256); a public key can only verify")]
    NoSecret,
    /// The requested lifetime is longer than `auth.max_token_ttl_secs`.
    #[error("the token lifetime is too long: at most {max} seconds")]
    TtlTooLong {
        /// `auth.max_token_ttl_secs`.
        max: u64,
    },
    /// The requested lifetime is 0 seconds.
    #[error("the token lifetime must be at least 1 second")]
    ZeroTtl,
    /// The subject is empty.
    #[error("the token subject must not be empty")]
    EmptySubject,
    /// The room (or room pattern) is empty.
    #[error("the token room must not be empty")]
    EmptyRoom,
    /// The signing library failed (not expected with an HMAC key).
    #[error("could not sign the token: {0}")]
    Signing(String),
}

/// The HS256 key, in both directions.
struct HmacKey {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

/// The public key from `auth.jwt_public_key` and the one algorithm it verifies.
struct PublicKey {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// Verifies tokens, checks the admin key and mints tokens, per [`AuthSettings`].
///
/// Built once at startup; `Send + Sync` and immutable, so share it behind an `Arc`.
pub struct Authenticator {
    hmac: Option<HmacKey>,
    public: Option<PublicKey>,
    admin_key: Option<Secret>,
    leeway_secs: u64,
    max_token_ttl_secs: u64,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.hmac.is_some())
            .field("public_key", &self.public.as_ref().map(|p| p.algorithm))
            .field("admin_key", &self.admin_key)
            .field("leeway_secs", &self.leeway_secs)
            .field("max_token_ttl_secs", &self.max_token_ttl_secs)
            .finish()
    }
}

impl Authenticator {
    /// Checks `settings` and loads the keys. Reads the PEM file with blocking I/O: call it at
    /// startup, not on an async worker. Detects whether the PEM holds an RSA or an Ed25519
    /// public key, and refuses private keys, certificates, EC keys and RSA keys under
    /// [`MIN_RSA_BITS`].
    pub fn new(settings: &AuthSettings) -> Result<Self, AuthConfigError> {
        if settings.leeway_secs > MAX_LEEWAY_SECS {
            return Err(AuthConfigError::LeewayTooLarge {
                max: MAX_LEEWAY_SECS,
            });
        }
        if settings.max_token_ttl_secs == 0 {
            return Err(AuthConfigError::ZeroMaxTokenTtl);
        }
        let hmac = match &settings.jwt_secret {
            Some(secret) => {
                check_secret("auth.jwt_secret", secret, MIN_JWT_SECRET_BYTES)?;
                let bytes = secret.expose().as_bytes();
                Some(HmacKey {
                    decoding: DecodingKey::from_secret(bytes),
                    encoding: EncodingKey::from_secret(bytes),
                    validation: validation(Algorithm::HS256),
                })
            }
            None => None,
        };
        let public = settings
            .jwt_public_key
            .as_deref()
            .map(load_public_key)
            .transpose()?;
        if let Some(key) = &settings.admin_key {
            check_secret("auth.admin_key", key, MIN_ADMIN_KEY_BYTES)?;
        }
        Ok(Self {
            hmac,
            public,
            admin_key: settings.admin_key.clone(),
            leeway_secs: settings.leeway_secs,
            max_token_ttl_secs: settings.max_token_ttl_secs,
        })
    }

    /// Whether JWT mode is on (a secret or a public key is configured).
    pub fn jwt_enabled(&self) -> bool {
        self.hmac.is_some() || self.public.is_some()
    }

    /// Verifies `token` for `room` (room name already percent-decoded). In mode none (no
    /// secret, no key) returns `Ok(Identity::anonymous_owner())` whatever the token.
    pub fn authorize(&self, token: Option<&str>, room: &str) -> Result<Identity, AuthError> {
        self.authorize_at(token, room, unix_now())
    }

    /// [`authorize`](Self::authorize) with the clock given, for tests.
    fn authorize_at(
        &self,
        token: Option<&str>,
        room: &str,
        now: u64,
    ) -> Result<Identity, AuthError> {
        if !self.jwt_enabled() {
            return Ok(Identity::anonymous_owner());
        }
        let token = match token {
            Some(t) if !t.is_empty() => t,
            _ => return Err(AuthError::Missing),
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let algorithm = header_algorithm(token)?;
        let (key, validation) = self.key_for(algorithm)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        let claims = check_claims(&data.claims, now, self.leeway_secs)?;
        if !claims
            .rooms
            .iter()
            .any(|pattern| room_matches(pattern, room))
        {
            return Err(AuthError::WrongRoom);
        }
        Ok(Identity {
            subject: Arc::from(claims.subject),
            role: claims.role,
            expires_at: Some(claims.expires_at),
        })
    }

    /// The key that verifies `algorithm`, if that algorithm is configured at all.
    fn key_for(&self, algorithm: Algorithm) -> Result<(&DecodingKey, &Validation), AuthError> {
        if let Some(hmac) = self.hmac.as_ref().filter(|_| algorithm == Algorithm::HS256) {
            return Ok((&hmac.decoding, &hmac.validation));
        }
        match &self.public {
            Some(public) if public.algorithm == algorithm => Ok((&public.key, &public.validation)),
            _ => Err(AuthError::WrongAlgorithm),
        }
    }

    /// Checks an `Authorization` header value against the admin key, in constant time.
    ///
    /// No admin key configured: [`AuthError::AdminDisabled`]. No header, or a scheme other
    /// than `Bearer` (case-insensitive): [`AuthError::AdminKeyRequired`]. Wrong key:
    /// [`AuthError::AdminKeyInvalid`].
    pub fn check_admin(&self, authorization: Option<&str>) -> Result<(), AuthError> {
        let Some(key) = &self.admin_key else {
            return Err(AuthError::AdminDisabled);
        };
        let presented = authorization
            .and_then(bearer_token)
            .ok_or(AuthError::AdminKeyRequired)?;
        if constant_time_eq(presented.as_bytes(), key.expose().as_bytes()) {
            Ok(())
        } else {
            Err(AuthError::AdminKeyInvalid)
        }
    }

    /// Whether `authorization` is `Bearer <the admin key>` (same constant-time compare),
    /// without an error; lets the admin key act as owner of any room.
    pub fn is_admin(&self, authorization: Option<&str>) -> bool {
        self.check_admin(authorization).is_ok()
    }

    /// Mints an HS256 token with claims `sub`, `room` (an exact name or a prefix pattern
    /// ending in `*`), `role`, `iat` = now and `exp` = now + `ttl_secs`
    /// (1 ≤ `ttl_secs` ≤ `auth.max_token_ttl_secs`).
    pub fn mint(
        &self,
        room: &str,
        role: Role,
        subject: &str,
        ttl_secs: u64,
    ) -> Result<String, MintError> {
        self.mint_at(room, role, subject, ttl_secs, unix_now())
    }

    /// [`mint`](Self::mint) with the clock given, for tests.
    fn mint_at(
        &self,
        room: &str,
        role: Role,
        subject: &str,
        ttl_secs: u64,
        now: u64,
    ) -> Result<String, MintError> {
        let hmac = self.hmac.as_ref().ok_or(MintError::NoSecret)?;
        if ttl_secs == 0 {
            return Err(MintError::ZeroTtl);
        }
        if ttl_secs > self.max_token_ttl_secs {
            return Err(MintError::TtlTooLong {
                max: self.max_token_ttl_secs,
            });
        }
        if subject.is_empty() {
            return Err(MintError::EmptySubject);
        }
        if room.is_empty() {
            return Err(MintError::EmptyRoom);
        }
        let claims = MintClaims {
            sub: subject,
            room,
            role,
            iat: now,
            exp: now.saturating_add(ttl_secs),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &hmac.encoding)
            .map_err(|e| MintError::Signing(e.to_string()))
    }
}

/// The claims of a minted token.
#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    room: &'a str,
    role: Role,
    iat: u64,
    exp: u64,
}

/// The claims that matter, once checked.
struct CheckedClaims<'a> {
    subject: &'a str,
    role: Role,
    rooms: Vec<&'a str>,
    expires_at: u64,
}

/// jsonwebtoken checks only the signature and the algorithm; the claims (times included) are
/// checked by [`check_claims`], so that each failure gets its own [`AuthError`], the clock can
/// be injected in tests, and the leeway arithmetic saturates instead of overflowing.
fn validation(algorithm: Algorithm) -> Validation {
    let mut v = Validation::new(algorithm);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v
}

/// Reads the `alg` of a token's header without trusting anything else in it.
fn header_algorithm(token: &str) -> Result<Algorithm, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(AuthError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    // RFC 7515 §4.1.11: a header naming critical extensions must be refused by a verifier
    // that does not understand them, and this one understands none.
    if header.contains_key("crit") {
        return Err(AuthError::Malformed);
    }
    match header.get("alg") {
        // `none`, and every name jsonwebtoken does not know, fail to parse.
        Some(Value::String(alg)) => alg
            .parse::<Algorithm>()
            .map_err(|_| AuthError::WrongAlgorithm),
        _ => Err(AuthError::Malformed),
    }
}

/// Maps a jsonwebtoken failure (signature or shape; claims are not validated there).
fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidClaimFormat(_) => AuthError::Malformed,
        // Anything else is a key that cannot verify this token: it does not verify.
        _ => AuthError::BadSignature,
    }
}

/// A claim, with `null` taken as absent.
fn claim<'a>(claims: &'a Map<String, Value>, name: &'static str) -> Option<&'a Value> {
    claims.get(name).filter(|v| !v.is_null())
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch; fractions are dropped and negative
/// values count as the epoch itself.
fn numeric_date(value: &Value) -> Option<u64> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(secs) = n.as_u64() {
        return Some(secs);
    }
    if n.as_i64().is_some() {
        return Some(0); // negative
    }
    let secs = n.as_f64().filter(|f| f.is_finite())?;
    // `as` saturates: fine for any finite float.
    Some(if secs <= 0.0 { 0 } else { secs as u64 })
}

/// Checks the claims of a token whose signature verified.
fn check_claims(
    claims: &Map<String, Value>,
    now: u64,
    leeway: u64,
) -> Result<CheckedClaims<'_>, AuthError> {
    let exp = claim(claims, "exp").ok_or(AuthError::MissingClaim("exp"))?;
    let expires_at = numeric_date(exp).ok_or(AuthError::InvalidClaim("exp"))?;
    if now >= expires_at.saturating_add(leeway) {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = claim(claims, "nbf") {
        let not_before = numeric_date(nbf).ok_or(AuthError::InvalidClaim("nbf"))?;
        if now.saturating_add(leeway) < not_before {
            return Err(AuthError::NotYetValid);
        }
    }
    if let Some(iat) = claim(claims, "iat") {
        numeric_date(iat).ok_or(AuthError::InvalidClaim("iat"))?;
    }
    let subject = match claim(claims, "sub").ok_or(AuthError::MissingClaim("sub"))? {
        Value::String(s) if !s.is_empty() => s.as_str(),
        _ => return Err(AuthError::InvalidClaim("sub")),
    };
    let role = match claim(claims, "role").ok_or(AuthError::MissingClaim("role"))? {
        Value::String(s) => Role::from_claim(s).ok_or(AuthError::InvalidClaim("role"))?,
        _ => return Err(AuthError::InvalidClaim("role")),
    };
    let rooms = room_patterns(claim(claims, "room").ok_or(AuthError::MissingClaim("room"))?)
        .ok_or(AuthError::InvalidClaim("room"))?;
    Ok(CheckedClaims {
        subject,
        role,
        rooms,
        expires_at,
    })
}

/// The entries of a `room` claim: a non-empty string, or a non-empty array of them.
fn room_patterns(value: &Value) -> Option<Vec<&str>> {
    match value {
        Value::String(s) if !s.is_empty() => Some(vec![s.as_str()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(s) if !s.is_empty() => Some(s.as_str()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Whether one `room` entry grants `room`: equal, or `pattern` is `prefix*` and `room`
/// starts with `prefix`.
fn room_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// Refuses an empty or short secret.
fn check_secret(field: &'static str, secret: &Secret, min: usize) -> Result<(), AuthConfigError> {
    let len = secret.expose().len();
    if len == 0 {
        Err(AuthConfigError::EmptySecret { field })
    } else if len < min {
        Err(AuthConfigError::SecretTooShort { field, min })
    } else {
        Ok(())
    }
}

/// Reads `path` and builds the verifying key it holds, RSA (RS256) or Ed25519 (EdDSA).
fn load_public_key(path: &Path) -> Result<PublicKey, AuthConfigError> {
    let pem = std::fs::read(path).map_err(|source| AuthConfigError::ReadKey {
        path: path.to_owned(),
        source,
    })?;
    let unsupported = |reason| AuthConfigError::UnsupportedKey {
        path: path.to_owned(),
        reason,
    };
    match pem_label(&pem) {
        None => {
            return Err(AuthConfigError::NotPem {
                path: path.to_owned(),
            })
        }
        Some(label) if label.contains("PRIVATE KEY") => {
            return Err(AuthConfigError::PrivateKey {
                path: path.to_owned(),
            })
        }
        Some(label) if label.contains("CERTIFICATE") => {
            return Err(AuthConfigError::Certificate {
                path: path.to_owned(),
            })
        }
        Some(_) => {}
    }
    // `from_rsa_pem` succeeds only on an RSA `PUBLIC KEY` (SPKI) or `RSA PUBLIC KEY` (PKCS#1),
    // and yields the PKCS#1 DER without checking it; parse it here so a broken key fails now
    // rather than at every verification.
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        let der = key
            .try_get_as_bytes()
            .map_err(|_| unsupported("not a valid RSA public key"))?;
        let parse = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .rsa_pub_components_from_public_key;
        let (n, e) = parse(der).map_err(|_| {
            unsupported("not a valid RSA public key (RSA keys of 2048 to 4096 bits are supported)")
        })?;
        let bits = bit_length(&n);
        if bits < MIN_RSA_BITS {
            return Err(AuthConfigError::WeakRsaKey {
                path: path.to_owned(),
                bits,
                min: MIN_RSA_BITS,
            });
        }
        return Ok(PublicKey {
            algorithm: Algorithm::RS256,
            key: DecodingKey::from_rsa_raw_components(&n, &e),
            validation: validation(Algorithm::RS256),
        });
    }
    // `from_ed_pem` succeeds only on an Ed25519 `PUBLIC KEY` (SPKI). jsonwebtoken slices the
    // first 32 bytes of the key at every verification, so check the length here, and that it
    // is a valid curve point (a verifier cannot be built otherwise; with a valid point the
    // dummy signature is merely wrong: Ok(false)).
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        let valid = key.try_get_as_bytes().map(<[u8]>::len).ok() == Some(32)
            && jsonwebtoken::crypto::verify("AA", b"", &key, Algorithm::EdDSA).is_ok();
        if !valid {
            return Err(unsupported("not a valid Ed25519 public key"));
        }
        return Ok(PublicKey {
            algorithm: Algorithm::EdDSA,
            key,
            validation: validation(Algorithm::EdDSA),
        });
    }
    if DecodingKey::from_ec_pem(&pem).is_ok() {
        return Err(unsupported(
            "ECDSA keys are not supported; use an RSA (RS256) or Ed25519 (EdDSA) public key",
        ));
    }
    Err(unsupported(
        "not an RSA or Ed25519 public key (expected a PEM `PUBLIC KEY` or `RSA PUBLIC KEY`)",
    ))
}

/// The label of the first PEM block (`PUBLIC KEY` in `-----BEGIN PUBLIC KEY-----`).
fn pem_label(pem: &[u8]) -> Option<&str> {
    const BEGIN: &str = "-----BEGIN ";
    let text = std::str::from_utf8(pem).ok()?;
    let rest = text.get(text.find(BEGIN)? + BEGIN.len()..)?;
    rest.get(..rest.find("-----")?)
}

/// Bits in a big-endian unsigned integer.
fn bit_length(be: &[u8]) -> usize {
    let digits: &[u8] = match be.iter().position(|&b| b != 0) {
        Some(first) => be.get(first..).unwrap_or_default(),
        None => return 0,
    };
    let top = digits.first().copied().unwrap_or(0);
    (digits.len() - 1) * 8 + (8 - top.leading_zeros() as usize)
}

/// Compares `presented` with `expected` in time that depends only on `presented.len()`: the
/// lengths are compared, then every byte of `presented` is XOR-folded against `expected`
/// (cycled), with no early exit. Neither where they differ nor the expected length shows.
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (a, b) in presented.iter().zip(expected.iter().cycle()) {
        diff |= a ^ b;
    }
    // `expected` empty: the zip above saw nothing, and the length flag decides.
    std::hint::black_box(diff) == 0
}

/// The credentials of an `Authorization: Bearer <credentials>` value (scheme
/// case-insensitive); `None` for another scheme or empty credentials.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(rest.trim()).filter(|t| !t.is_empty())
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where a request carried its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `?token=` in the query string.
    Query,
    /// `Authorization: Bearer <token>`.
    AuthorizationHeader,
    /// A value of `Sec-WebSocket-Protocol`. The response must echo exactly that value in its
    /// own `Sec-WebSocket-Protocol` header, or browsers abort the connection.
    Subprotocol,
}

/// A token and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    /// The token, as sent (percent-decoded when it came in the query).
    pub token: String,
    /// Where it was.
    pub source: TokenSource,
}

/// Finds the token of a request, first match wins:
/// 1. `token=` in the raw query string (a leading `?` is allowed), percent-decoded exactly
///    (`+` stays `+`; JWTs never hold `+` or spaces); an empty value is skipped;
/// 2. `Authorization: Bearer <token>` (scheme case-insensitive);
/// 3. the first value of `Sec-WebSocket-Protocol` (comma-separated, trimmed) that looks like
///    a JWT: three non-empty base64url segments separated by dots. The caller must echo it.
///
/// An `Authorization` header holding the admin key is found here too; check
/// [`Authenticator::is_admin`] first where the admin key is accepted.
pub fn find_token(raw_query: Option<&str>, headers: &HeaderMap) -> Option<FoundToken> {
    if let Some(token) = raw_query.and_then(query_token) {
        return Some(FoundToken {
            token,
            source: TokenSource::Query,
        });
    }
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    if let Some(token) = bearer {
        return Some(FoundToken {
            token: token.to_owned(),
            source: TokenSource::AuthorizationHeader,
        });
    }
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| looks_like_jwt(p))
        .map(|p| FoundToken {
            token: p.to_owned(),
            source: TokenSource::Subprotocol,
        })
}

/// The first non-empty `token` parameter of a query string, percent-decoded.
fn query_token(query: &str) -> Option<String> {
    let query = query.strip_prefix('?').unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if percent_decode_str(name).decode_utf8_lossy() != "token" {
            return None;
        }
        let value = percent_decode_str(value).decode_utf8_lossy();
        (!value.is_empty()).then(|| value.into_owned())
    })
}

/// Three non-empty base64url segments separated by dots.
fn looks_like_jwt(s: &str) -> bool {
    let is_segment = |seg: &str| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut parts = s.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(a), Some(b), Some(c), None) if is_segment(a) && is_segment(b) && is_segment(c)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::LazyLock;

    const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";
    const ADMIN_KEY: &str = "admin-key-0123456789";
    /// A fixed "now" for deterministic time checks.
    const NOW: u64 = 1_700_000_000;

    fn key_path(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name)
    }

    fn key_bytes(name: &str) -> Vec<u8> {
        std::fs::read(key_path(name)).unwrap()
    }

    fn hs_settings() -> AuthSettings {
        AuthSettings {
            jwt_secret: Some(Secret::new(SECRET)),
            admin_key: Some(Secret::new(ADMIN_KEY)),
            ..AuthSettings::default()
        }
    }

    fn hs_auth() -> Authenticator {
        Authenticator::new(&hs_settings()).unwrap()
    }

    fn key_auth(name: &str, with_secret: bool) -> Authenticator {
        Authenticator::new(&AuthSettings {
            jwt_secret: with_secret.then(|| Secret::new(SECRET)),
            jwt_public_key: Some(key_path(name)),
            ..AuthSettings::default()
        })
        .unwrap()
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    fn hs(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            claims,
        )
    }

    fn rs(claims: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(&key_bytes("rsa_test_private.pem")).unwrap();
        sign(Algorithm::RS256, &key, claims)
    }

    fn ed(claims: &Value) -> String {
        let key = EncodingKey::from_ed_pem(&key_bytes("ed25519_test_private.pem")).unwrap();
        sign(Algorithm::EdDSA, &key, claims)
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Valid claims for room "doc" as editor, expiring an hour after NOW.
    fn claims() -> Value {
        json!({"sub": "alice", "room": "doc", "role": "editor", "exp": NOW + 3600, "iat": NOW})
    }

    fn with(mut base: Value, key: &str, value: Value) -> Value {
        base.as_object_mut().unwrap().insert(key.to_owned(), value);
        base
    }

    fn without(mut base: Value, key: &str) -> Value {
        base.as_object_mut().unwrap().remove(key);
        base
    }

    fn check(auth: &Authenticator, token: &str, room: &str) -> Result<Identity, AuthError> {
        auth.authorize_at(Some(token), room, NOW)
    }

    #[test]
    fn mint_then_authorize_round_trips() {
        let auth = hs_auth();
        let token = auth.mint_at("doc", Role::Viewer, "bob", 600, NOW).unwrap();
        let id = check(&auth, &token, "doc").unwrap();
        assert_eq!(&*id.subject, "bob");
        assert_eq!(id.role, Role::Viewer);
        assert_eq!(id.expires_at, Some(NOW + 600));
        // The public entry points use the real clock.
        let token = auth.mint("doc", Role::Owner, "carol", 60).unwrap();
        let id = auth.authorize(Some(&token), "doc").unwrap();
        assert_eq!(id.role, Role::Owner);
        assert!(id.expires_at.unwrap() > unix_now());
        // A minted prefix pattern.
        let token = auth
            .mint_at("team-a/*", Role::Editor, "dan", 60, NOW)
            .unwrap();
        assert!(check(&auth, &token, "team-a/notes").is_ok());
        assert_eq!(
            check(&auth, &token, "team-b/notes"),
            Err(AuthError::WrongRoom)
        );
    }

    #[test]
    fn room_patterns_exact_prefix_and_array() {
        let auth = hs_auth();
        let token = |room: Value| hs(&with(claims(), "room", room));
        let cases: &[(Value, &str, bool)] = &[
            (json!("doc"), "doc", true),
            (json!("doc"), "doc2", false),
            (json!("doc"), "do", false),
            (json!("team-a/*"), "team-a/x", true),
            (json!("team-a/*"), "team-a/x/y", true),
            (json!("team-a/*"), "team-b/x", false),
            (json!("team-a/*"), "team-a", false),
            (json!("a*"), "abc", true),
            (json!("a*"), "a", true),
            (json!("a*"), "b", false),
            (json!("*"), "anything/at all", true),
            (json!("a*b"), "a*b", true),
            (json!("a*b"), "axb", false),
            (json!(["x", "team-*"]), "x", true),
            (json!(["x", "team-*"]), "team-1", true),
            (json!(["x", "team-*"]), "y", false),
        ];
        for (room_claim, room, ok) in cases {
            let result = check(&auth, &token(room_claim.clone()), room);
            if *ok {
                assert!(
                    result.is_ok(),
                    "{room_claim} should open {room}: {result:?}"
                );
            } else {
                assert_eq!(result, Err(AuthError::WrongRoom), "{room_claim} vs {room}");
            }
        }
    }

    #[test]
    fn a_token_for_one_room_cannot_open_another() {
        let auth = hs_auth();
        let token = auth.mint_at("A", Role::Owner, "alice", 60, NOW).unwrap();
        let err = check(&auth, &token, "B").unwrap_err();
        assert_eq!(err, AuthError::WrongRoom);
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert_eq!(err.label(), "wrong_room");
    }

    #[test]
    fn forged_signatures_are_refused() {
        let auth = hs_auth();
        let token = hs(&claims());
        // Flip the first character of the signature (always still valid base64url).
        let (message, signature) = token.rsplit_once('.').unwrap();
        let mut chars: Vec<char> = signature.chars().collect();
        chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
        let forged = format!("{message}.{}", chars.into_iter().collect::<String>());
        assert_eq!(check(&auth, &forged, "doc"), Err(AuthError::BadSignature));
        // Signed with another secret.
        let other = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"another-secret-0123456789-abcdefghijkl"),
            &claims(),
        );
        assert_eq!(check(&auth, &other, "doc"), Err(AuthError::BadSignature));
        // Claims swapped under a valid signature.
        let (header, _, signature) = {
            let mut p = token.split('.');
            (p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
        };
        let payload = b64(with(claims(), "role", json!("owner")).to_string());
        let swapped = format!("{header}.{payload}.{signature}");
        assert_eq!(check(&auth, &swapped, "doc"), Err(AuthError::BadSignature));
        // Signature removed.
        assert_eq!(
            check(&auth, &format!("{message}."), "doc"),
            Err(AuthError::BadSignature)
        );
        // Signature not base64url.
        assert_eq!(
            check(&auth, &format!("{message}.!!!"), "doc"),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let payload = b64(claims().to_string());
        for auth in [
            hs_auth(),
            key_auth("rsa_test_public.pem", true),
            key_auth("ed25519_test_public.pem", false),
        ] {
            for header in [
                r#"{"alg":"none","typ":"JWT"}"#,
                r#"{"alg":"None"}"#,
                r#"{"alg":"NONE"}"#,
                r#"{"alg":""}"#,
            ] {
                let header = b64(header);
                for token in [
                    format!("{header}.{payload}."),
                    format!("{header}.{payload}.c2ln"),
                ] {
                    assert_eq!(
                        check(&auth, &token, "doc"),
                        Err(AuthError::WrongAlgorithm),
                        "{token}"
                    );
                }
            }
        }
    }

    #[test]
    fn algorithms_not_configured_are_refused() {
        let hs_only = hs_auth();
        let secret = EncodingKey::from_secret(SECRET.as_bytes());
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = sign(alg, &secret, &claims());
            assert_eq!(
                check(&hs_only, &token, "doc"),
                Err(AuthError::WrongAlgorithm)
            );
        }
        assert_eq!(
            check(&hs_only, &rs(&claims()), "doc"),
            Err(AuthError::WrongAlgorithm)
        );

        // Only a public key: HS256 is not accepted at all.
        let rsa_only = key_auth("rsa_test_public.pem", false);
        assert_eq!(
            check(&rsa_only, &hs(&claims()), "doc"),
            Err(AuthError::WrongAlgorithm)
        );
        assert_eq!(
            check(&rsa_only, &ed(&claims()), "doc"),
            Err(AuthError::WrongAlgorithm)
        );
        let rsa_private = EncodingKey::from_rsa_pem(&key_bytes("rsa_test_private.pem")).unwrap();
        for alg in [Algorithm::RS384, Algorithm::RS512, Algorithm::PS256] {
            assert_eq!(
                check(&rsa_only, &sign(alg, &rsa_private, &claims()), "doc"),
                Err(AuthError::WrongAlgorithm),
                "{alg:?}"
            );
        }

        // RS256 presented to an Ed25519 server.
        let ed_only = key_auth("ed25519_test_public.pem", false);
        assert_eq!(
            check(&ed_only, &rs(&claims()), "doc"),
            Err(AuthError::WrongAlgorithm)
        );

        // The classic confusion: HS256 keyed with the RSA public key's PEM bytes.
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&key_bytes("rsa_test_public.pem")),
            &claims(),
        );
        assert_eq!(
            check(&rsa_only, &confused, "doc"),
            Err(AuthError::WrongAlgorithm)
        );
        // With a secret configured too, HS256 is verified with the secret only.
        let both = key_auth("rsa_test_public.pem", true);
        assert_eq!(check(&both, &confused, "doc"), Err(AuthError::BadSignature));
    }

    #[test]
    fn rs256_and_eddsa_tokens_verify_with_test_keys() {
        let rsa = key_auth("rsa_test_public.pem", false);
        let id = check(&rsa, &rs(&claims()), "doc").unwrap();
        assert_eq!(id.role, Role::Editor);
        assert_eq!(&*id.subject, "alice");

        let ed_auth = key_auth("ed25519_test_public.pem", false);
        let id = check(&ed_auth, &ed(&claims()), "doc").unwrap();
        assert_eq!(id.expires_at, Some(NOW + 3600));

        // Secret and key together: both algorithms are accepted.
        let both = key_auth("rsa_test_public.pem", true);
        assert!(check(&both, &rs(&claims()), "doc").is_ok());
        assert!(check(&both, &hs(&claims()), "doc").is_ok());
        let both_ed = key_auth("ed25519_test_public.pem", true);
        assert!(check(&both_ed, &ed(&claims()), "doc").is_ok());
        assert!(check(&both_ed, &hs(&claims()), "doc").is_ok());

        // A signature by another key of the same kind does not verify.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let other = EncodingKey::from_ed_pem(other.serialize_pem().as_bytes()).unwrap();
        let token = sign(Algorithm::EdDSA, &other, &claims());
        assert_eq!(check(&ed_auth, &token, "doc"), Err(AuthError::BadSignature));
        // Nor does a forged RSA signature.
        let token = rs(&claims());
        let (message, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{message}.{}", b64([7u8; 256]));
        assert_eq!(check(&rsa, &forged, "doc"), Err(AuthError::BadSignature));
    }

    #[test]
    fn expiry_and_not_before() {
        let auth = hs_auth();
        let exp = |e: Value| hs(&with(claims(), "exp", e));
        assert_eq!(
            check(&auth, &exp(json!(NOW - 1)), "doc"),
            Err(AuthError::Expired)
        );
        // RFC 7519: refused on or after exp.
        assert_eq!(
            check(&auth, &exp(json!(NOW)), "doc"),
            Err(AuthError::Expired)
        );
        assert!(check(&auth, &exp(json!(NOW + 1)), "doc").is_ok());
        assert_eq!(
            check(&auth, &exp(json!(-5)), "doc"),
            Err(AuthError::Expired)
        );
        assert!(check(&auth, &exp(json!((NOW + 10) as f64 + 0.5)), "doc").is_ok());

        let nbf = |n: Value| hs(&with(claims(), "nbf", n));
        assert_eq!(
            check(&auth, &nbf(json!(NOW + 1)), "doc"),
            Err(AuthError::NotYetValid)
        );
        assert!(check(&auth, &nbf(json!(NOW)), "doc").is_ok());
        assert!(check(&auth, &nbf(json!(NOW - 100)), "doc").is_ok());
        let err = check(&auth, &nbf(json!(NOW + 100)), "doc").unwrap_err();
        assert_eq!(
            (err.status(), err.label()),
            (StatusCode::UNAUTHORIZED, "not_yet_valid")
        );
    }

    #[test]
    fn leeway_is_honoured() {
        let auth = Authenticator::new(&AuthSettings {
            leeway_secs: 30,
            ..hs_settings()
        })
        .unwrap();
        let exp = |e: u64| hs(&with(claims(), "exp", json!(e)));
        let nbf = |n: u64| hs(&with(claims(), "nbf", json!(n)));
        assert!(check(&auth, &exp(NOW - 10), "doc").is_ok());
        assert!(check(&auth, &exp(NOW - 29), "doc").is_ok());
        assert_eq!(check(&auth, &exp(NOW - 30), "doc"), Err(AuthError::Expired));
        assert_eq!(check(&auth, &exp(NOW - 31), "doc"), Err(AuthError::Expired));
        assert!(check(&auth, &nbf(NOW + 30), "doc").is_ok());
        assert_eq!(
            check(&auth, &nbf(NOW + 31), "doc"),
            Err(AuthError::NotYetValid)
        );
        // Extreme values saturate instead of overflowing.
        assert!(check(&auth, &exp(u64::MAX), "doc").is_ok());
        assert_eq!(
            check(&auth, &nbf(u64::MAX), "doc"),
            Err(AuthError::NotYetValid)
        );
        assert!(auth
            .authorize_at(Some(&exp(u64::MAX)), "doc", u64::MAX)
            .is_err());
    }

    #[test]
    fn missing_claims_are_named() {
        let auth = hs_auth();
        for name in ["sub", "exp", "room", "role"] {
            assert_eq!(
                check(&auth, &hs(&without(claims(), name)), "doc"),
                Err(AuthError::MissingClaim(name)),
                "{name}"
            );
            assert_eq!(
                check(&auth, &hs(&with(claims(), name, Value::Null)), "doc"),
                Err(AuthError::MissingClaim(name)),
                "{name}: null"
            );
        }
        let err = AuthError::MissingClaim("exp");
        assert_eq!(err.to_string(), "the token has no `exp` claim");
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn invalid_claims_are_named() {
        let auth = hs_auth();
        let cases: &[(&str, Value)] = &[
            ("role", json!("admin")),
            ("role", json!("Owner")),
            ("role", json!("")),
            ("role", json!(2)),
            ("role", json!(["owner"])),
            ("room", json!(5)),
            ("room", json!("")),
            ("room", json!([])),
            ("room", json!([""])),
            ("room", json!(["doc", 3])),
            ("room", json!({"name": "doc"})),
            ("sub", json!(5)),
            ("sub", json!("")),
            ("exp", json!("soon")),
            ("exp", json!(true)),
            ("nbf", json!("now")),
            ("iat", json!("then")),
        ];
        for (name, value) in cases {
            assert_eq!(
                check(&auth, &hs(&with(claims(), name, value.clone())), "doc"),
                Err(AuthError::InvalidClaim(name)),
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn unknown_claims_are_ignored() {
        let auth = hs_auth();
        let mut c = claims();
        for (k, v) in [
            ("aud", json!("someone-else")),
            ("iss", json!("https://issuer.invalid")),
            ("custom", json!({"nested": [1, 2]})),
        ] {
            c = with(c, k, v);
        }
        assert!(check(&auth, &hs(&c), "doc").is_ok());
        // Extra header fields too (kid, typ).
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("key-1".into());
        let token = jsonwebtoken::encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(check(&auth, &token, "doc").is_ok());
    }

    #[test]
    fn malformed_and_missing_tokens() {
        let auth = hs_auth();
        assert_eq!(auth.authorize_at(None, "doc", NOW), Err(AuthError::Missing));
        assert_eq!(
            auth.authorize_at(Some(""), "doc", NOW),
            Err(AuthError::Missing)
        );
        let good = hs(&claims());
        let (header, rest) = good.split_once('.').unwrap();
        let malformed = [
            "abc".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            "..".to_owned(),
            format!(".{rest}"),
            format!("{good}.extra"),
            format!("{}.{rest}", b64("not json")),
            format!("{}.{rest}", b64(r#"["alg","HS256"]"#)),
            format!("{}.{rest}", b64(r#"{"typ":"JWT"}"#)),
            format!("{}.{rest}", b64(r#"{"alg":256}"#)),
            format!("{}.{rest}", b64(r#"{"alg":"HS256","crit":["b64"]}"#)),
            format!("{header}=.{rest}"),
            format!("{header}.{}", "A".repeat(MAX_TOKEN_BYTES)),
        ];
        for token in &malformed {
            assert_eq!(
                check(&auth, token, "doc"),
                Err(AuthError::Malformed),
                "{token}"
            );
        }
        // A validly signed token whose payload is not a JSON object.
        let secret = EncodingKey::from_secret(SECRET.as_bytes());
        for payload in [json!([1, 2]), json!("claims"), json!(7)] {
            let token = sign(Algorithm::HS256, &secret, &payload);
            assert_eq!(check(&auth, &token, "doc"), Err(AuthError::Malformed));
        }
    }

    #[test]
    fn mode_none_grants_anonymous_owner() {
        let auth = Authenticator::new(&AuthSettings::default()).unwrap();
        assert!(!auth.jwt_enabled());
        assert!(!AuthSettings::default().jwt_enabled());
        for token in [None, Some(""), Some("garbage"), Some("a.b.c")] {
            assert_eq!(
                auth.authorize(token, "any"),
                Ok(Identity::anonymous_owner())
            );
        }
        let anon = Identity::anonymous_owner();
        assert_eq!(
            (&*anon.subject, anon.role, anon.expires_at),
            ("anonymous", Role::Owner, None)
        );
        assert_eq!(
            auth.mint("doc", Role::Owner, "x", 60),
            Err(MintError::NoSecret)
        );
        assert!(hs_auth().jwt_enabled());
        assert!(hs_settings().jwt_enabled());
    }

    #[test]
    fn mint_errors() {
        let auth = Authenticator::new(&AuthSettings {
            max_token_ttl_secs: 100,
            ..hs_settings()
        })
        .unwrap();
        assert!(auth.mint_at("doc", Role::Editor, "a", 100, NOW).is_ok());
        assert_eq!(
            auth.mint_at("doc", Role::Editor, "a", 101, NOW),
            Err(MintError::TtlTooLong { max: 100 })
        );
        assert_eq!(
            auth.mint_at("doc", Role::Editor, "a", 0, NOW),
            Err(MintError::ZeroTtl)
        );
        assert_eq!(
            auth.mint_at("doc", Role::Editor, "", 10, NOW),
            Err(MintError::EmptySubject)
        );
        assert_eq!(
            auth.mint_at("", Role::Editor, "a", 10, NOW),
            Err(MintError::EmptyRoom)
        );
        let rsa_only = key_auth("rsa_test_public.pem", false);
        assert_eq!(
            rsa_only.mint("doc", Role::Editor, "a", 10),
            Err(MintError::NoSecret)
        );
        // The minted token carries exactly the documented claims.
        let token = auth.mint_at("doc", Role::Owner, "a", 50, NOW).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(
            claims,
            json!({"sub": "a", "room": "doc", "role": "owner", "iat": NOW, "exp": NOW + 50})
        );
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "HS256");
    }

    #[test]
    fn startup_errors() {
        let new = |s: AuthSettings| Authenticator::new(&s).map(|_| ()).unwrap_err();
        let with_key = |path: PathBuf| AuthSettings {
            jwt_public_key: Some(path),
            ..AuthSettings::default()
        };
        assert!(matches!(
            new(AuthSettings {
                jwt_secret: Some(Secret::new("")),
                ..AuthSettings::default()
            }),
            AuthConfigError::EmptySecret {
                field: "auth.jwt_secret"
            }
        ));
        let short = new(AuthSettings {
            jwt_secret: Some(Secret::new("short-secret")),
            ..AuthSettings::default()
        });
        assert!(matches!(
            short,
            AuthConfigError::SecretTooShort { min: 32, .. }
        ));
        assert!(!short.to_string().contains("short-secret"));
        assert!(matches!(
            new(AuthSettings {
                admin_key: Some(Secret::new("tiny")),
                ..AuthSettings::default()
            }),
            AuthConfigError::SecretTooShort {
                field: "auth.admin_key",
                ..
            }
        ));
        assert!(matches!(
            new(AuthSettings {
                leeway_secs: MAX_LEEWAY_SECS + 1,
                ..hs_settings()
            }),
            AuthConfigError::LeewayTooLarge { .. }
        ));
        assert!(matches!(
            new(AuthSettings {
                max_token_ttl_secs: 0,
                ..hs_settings()
            }),
            AuthConfigError::ZeroMaxTokenTtl
        ));
        assert!(matches!(
            new(with_key(key_path("does-not-exist.pem"))),
            AuthConfigError::ReadKey { .. }
        ));
        assert!(matches!(
            new(with_key(key_path("rsa_test_private.pem"))),
            AuthConfigError::PrivateKey { .. }
        ));
        assert!(matches!(
            new(with_key(key_path("ed25519_test_private.pem"))),
            AuthConfigError::PrivateKey { .. }
        ));
        assert!(matches!(
            new(with_key(key_path("README.md"))),
            AuthConfigError::NotPem { .. }
        ));
        let weak = new(with_key(key_path("rsa1024_test_public.pem")));
        assert!(
            matches!(
                weak,
                AuthConfigError::WeakRsaKey {
                    bits: 1024,
                    min: 2048,
                    ..
                }
            ),
            "{weak}"
        );

        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, contents: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        };
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let err = new(with_key(write("ec.pem", &ec.public_key_pem())));
        assert!(
            matches!(err, AuthConfigError::UnsupportedKey { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("ECDSA"), "{err}");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        assert!(matches!(
            new(with_key(write("cert.pem", &cert.cert.pem()))),
            AuthConfigError::Certificate { .. }
        ));
        let garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            new(with_key(write("garbage.pem", garbage))),
            AuthConfigError::UnsupportedKey { .. }
        ));
    }

    #[test]
    fn find_token_sources_and_precedence() {
        let none = HeaderMap::new();
        let found = |q: Option<&str>, h: &HeaderMap| find_token(q, h).map(|f| (f.token, f.source));
        let q = |t: &str| Some((t.to_owned(), TokenSource::Query));
        assert_eq!(found(Some("token=a.b.c"), &none), q("a.b.c"));
        assert_eq!(found(Some("?token=a.b.c"), &none), q("a.b.c"));
        assert_eq!(found(Some("token=a%2Eb%2ec"), &none), q("a.b.c"));
        assert_eq!(found(Some("x=1&token=a.b.c&y=2"), &none), q("a.b.c"));
        assert_eq!(found(Some("x=1&tok%65n=a.b.c"), &none), q("a.b.c"));
        assert_eq!(found(Some("token=&token=a.b.c"), &none), q("a.b.c"));
        assert_eq!(found(Some("token=first&token=second"), &none), q("first"));
        assert_eq!(found(Some("a+b=c+d"), &none), None);
        assert_eq!(found(Some("token=a+b"), &none), q("a+b"));
        assert_eq!(found(Some("tokens=a.b.c&xtoken=d"), &none), None);
        assert_eq!(found(Some("token"), &none), None);
        assert_eq!(found(Some(""), &none), None);
        assert_eq!(found(None, &none), None);

        let header = |name, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_str(value).unwrap());
            h
        };
        let auth = |t: &str| Some((t.to_owned(), TokenSource::AuthorizationHeader));
        for value in ["Bearer x.y.z", "bearer x.y.z", "BEARER   x.y.z  "] {
            assert_eq!(found(None, &header(AUTHORIZATION, value)), auth("x.y.z"));
        }
        for value in ["Basic eDp5", "Bearer", "Bearer   ", "x.y.z", "Bearerx.y.z"] {
            assert_eq!(found(None, &header(AUTHORIZATION, value)), None, "{value}");
        }

        let proto = |t: &str| Some((t.to_owned(), TokenSource::Subprotocol));
        let jwt = hs(&claims());
        assert_eq!(
            found(
                None,
                &header(SEC_WEBSOCKET_PROTOCOL, &format!("yjs, {jwt}"))
            ),
            proto(&jwt)
        );
        assert_eq!(
            found(None, &header(SEC_WEBSOCKET_PROTOCOL, &format!("{jwt},yjs"))),
            proto(&jwt)
        );
        for value in ["yjs", "yjs, a.b", "a..c", "a.b.c.d", "a.b+.c", ".b.c"] {
            assert_eq!(
                found(None, &header(SEC_WEBSOCKET_PROTOCOL, value)),
                None,
                "{value}"
            );
        }
        // Several header lines.
        let mut h = HeaderMap::new();
        h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("yjs"));
        h.append(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("p.q.r, s.t.u"),
        );
        assert_eq!(found(None, &h), proto("p.q.r"));

        // Precedence: query, then Authorization, then subprotocol.
        let mut all = header(AUTHORIZATION, "Bearer h.h.h");
        all.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("yjs, s.s.s"),
        );
        assert_eq!(found(Some("token=q.q.q"), &all), q("q.q.q"));
        assert_eq!(found(Some("other=1"), &all), auth("h.h.h"));
        all.remove(AUTHORIZATION);
        assert_eq!(found(None, &all), proto("s.s.s"));
        // A found token authorizes like any other.
        let hs_auth = hs_auth();
        let t = find_token(Some(&format!("token={jwt}")), &none).unwrap();
        assert!(check(&hs_auth, &t.token, "doc").is_ok());
    }

    #[test]
    fn check_admin_compares_the_whole_key() {
        let auth = hs_auth();
        let bearer = |k: &str| format!("Bearer {k}");
        assert_eq!(auth.check_admin(Some(&bearer(ADMIN_KEY))), Ok(()));
        assert_eq!(
            auth.check_admin(Some(&format!("bearer  {ADMIN_KEY} "))),
            Ok(())
        );
        let mut same_len = ADMIN_KEY.to_owned();
        same_len.replace_range(ADMIN_KEY.len() - 1.., "X");
        for wrong in [
            same_len.as_str(),
            &ADMIN_KEY[..ADMIN_KEY.len() - 1],
            &format!("{ADMIN_KEY}0"),
            &format!("{ADMIN_KEY}{ADMIN_KEY}"),
            "x",
        ] {
            let err = auth.check_admin(Some(&bearer(wrong))).unwrap_err();
            assert_eq!(err, AuthError::AdminKeyInvalid, "{wrong}");
            assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
            assert!(!auth.is_admin(Some(&bearer(wrong))));
        }
        for missing in [
            None,
            Some(""),
            Some(ADMIN_KEY),
            Some(&format!("Basic {ADMIN_KEY}") as &str),
        ] {
            assert_eq!(
                auth.check_admin(missing),
                Err(AuthError::AdminKeyRequired),
                "{missing:?}"
            );
        }
        assert!(auth.is_admin(Some(&bearer(ADMIN_KEY))));
        assert!(!auth.is_admin(None));

        let disabled = Authenticator::new(&AuthSettings {
            admin_key: None,
            ..hs_settings()
        })
        .unwrap();
        let err = disabled.check_admin(Some(&bearer(ADMIN_KEY))).unwrap_err();
        assert_eq!(err, AuthError::AdminDisabled);
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert!(!disabled.is_admin(Some(&bearer(ADMIN_KEY))));
        assert!(!disabled.is_admin(Some("Bearer ")));
    }

    #[test]
    fn constant_time_eq_truth_table() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcabc", b"abc")); // the cycled bytes match, the length does not
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(!constant_time_eq(b"abc", b""));
    }

    #[test]
    fn secrets_never_show() {
        let settings = hs_settings();
        let debug = format!("{settings:?} {:#?}", settings);
        assert!(
            !debug.contains(SECRET) && !debug.contains(ADMIN_KEY),
            "{debug}"
        );
        assert!(debug.contains("Secret(***)"));
        let secret = Secret::new(SECRET);
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(secret.expose(), SECRET);
        let auth = hs_auth();
        let debug = format!("{auth:?}");
        assert!(
            !debug.contains(SECRET) && !debug.contains(ADMIN_KEY),
            "{debug}"
        );

        // No error message quotes the token it refused.
        let token = hs(&claims());
        let attempts = [
            check(&auth, &token, "other"),
            check(&auth, &format!("{token}x"), "doc"),
            check(&auth, &token.replacen('.', ".x", 1), "doc"),
            auth.authorize_at(Some(&token), "doc", NOW + 7200),
        ];
        for attempt in attempts {
            let err = attempt.unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains(&token) && !text.contains(SECRET), "{text}");
        }
        let err = auth
            .check_admin(Some("Bearer not-the-admin-key"))
            .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("not-the-admin-key"));
    }

    #[test]
    fn error_labels_and_statuses() {
        let all = [
            AuthError::Missing,
            AuthError::Malformed,
            AuthError::BadSignature,
            AuthError::WrongAlgorithm,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::MissingClaim("sub"),
            AuthError::InvalidClaim("role"),
            AuthError::WrongRoom,
            AuthError::InsufficientRole {
                needed: Role::Editor,
                have: Role::Viewer,
            },
            AuthError::AdminKeyRequired,
            AuthError::AdminKeyInvalid,
            AuthError::AdminDisabled,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(AuthError::label).collect();
        assert_eq!(labels.len(), all.len());
        for err in &all {
            let forbidden = matches!(
                err,
                AuthError::WrongRoom
                    | AuthError::InsufficientRole { .. }
                    | AuthError::AdminDisabled
            );
            let want = if forbidden {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(err.status(), want, "{err:?}");
            assert!(!err.to_string().contains('\n'));
            assert!(err
                .label()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        assert_eq!(
            all[9].to_string(),
            "role viewer may not do this: it needs editor"
        );
    }

    #[test]
    fn roles() {
        assert!(Role::Viewer < Role::Editor && Role::Editor < Role::Owner);
        assert!(!Role::Viewer.can_write());
        assert!(Role::Editor.can_write() && Role::Owner.can_write());
        for role in [Role::Viewer, Role::Editor, Role::Owner] {
            assert_eq!(serde_json::to_value(role).unwrap(), json!(role.as_str()));
            assert_eq!(Role::from_claim(role.as_str()), Some(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        let viewer = Identity {
            role: Role::Viewer,
            ..Identity::anonymous_owner()
        };
        assert_eq!(viewer.require(Role::Viewer), Ok(()));
        assert_eq!(
            viewer.require(Role::Owner),
            Err(AuthError::InsufficientRole {
                needed: Role::Owner,
                have: Role::Viewer
            })
        );
    }

    #[test]
    fn settings_from_toml() {
        let s: AuthSettings = toml::from_str("").unwrap();
        assert_eq!(s, AuthSettings::default());
        assert!(s.viewer_awareness && !s.allow_unauthenticated);
        assert_eq!((s.leeway_secs, s.max_token_ttl_secs), (0, 86_400));
        assert!(s.jwt_secret.is_none() && s.admin_key.is_none() && s.jwt_public_key.is_none());
        let s: AuthSettings = toml::from_str(
            r#"
            jwt_secret = "abc"
            jwt_public_key = "/etc/yrelay/jwt.pem"
            leeway_secs = 5
            admin_key = "def"
            viewer_awareness = false
            max_token_ttl_secs = 60
            allow_unauthenticated = true
            "#,
        )
        .unwrap();
        assert_eq!(s.jwt_secret, Some(Secret::new("abc")));
        assert_eq!(s.admin_key.as_ref().map(Secret::expose), Some("def"));
        assert_eq!(s.jwt_public_key, Some(PathBuf::from("/etc/yrelay/jwt.pem")));
        assert!(!s.viewer_awareness && s.allow_unauthenticated);
        assert!(toml::from_str::<AuthSettings>("jwt_secrit = \"x\"").is_err());
    }

    #[test]
    fn authenticator_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Authenticator>();
        assert_send_sync::<Arc<Authenticator>>();
    }

    #[test]
    fn bit_length_counts_bits() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[1]), 1);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[0x7f, 0xff]), 15);
    }

    /// Authenticators for the property tests, built once.
    static AUTHS: LazyLock<Vec<Authenticator>> = LazyLock::new(|| {
        vec![
            hs_auth(),
            key_auth("rsa_test_public.pem", true),
            key_auth("ed25519_test_public.pem", false),
        ]
    });

    fn never_authorizes(token: &str) {
        for auth in AUTHS.iter() {
            assert!(auth.authorize(Some(token), "doc").is_err());
            assert!(auth.authorize_at(Some(token), "doc", NOW).is_err());
        }
    }

    fn find_token_never_panics(s: &str) {
        let _ = find_token(Some(s), &HeaderMap::new());
        if let Ok(value) = HeaderValue::from_str(s) {
            for name in [AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL] {
                let mut headers = HeaderMap::new();
                headers.insert(name, value.clone());
                if let Some(found) = find_token(None, &headers) {
                    never_authorizes(&found.token);
                }
            }
        }
        // Arbitrary bytes in a header value (not always UTF-8).
        if let Ok(value) = HeaderValue::from_bytes(s.as_bytes()) {
            let mut headers = HeaderMap::new();
            headers.insert(SEC_WEBSOCKET_PROTOCOL, value);
            let _ = find_token(None, &headers);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            never_authorizes(&s);
            find_token_never_panics(&s);
            find_token_never_panics(&format!("token={s}"));
            find_token_never_panics(&format!("Bearer {s}"));
        }

        #[test]
        fn arbitrary_jwt_shaped_strings_never_authorize(
            s in "[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,400}"
        ) {
            never_authorizes(&s);
            find_token_never_panics(&s);
            find_token_never_panics(&format!("yjs, {s}"));
        }

        #[test]
        fn arbitrary_payloads_under_real_headers_never_authorize(
            alg in prop::sample::select(vec!["HS256", "HS384", "RS256", "EdDSA", "ES256", "none", "PS256"]),
            payload in prop::collection::vec(any::<u8>(), 0..300),
            signature in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            never_authorizes(&format!("{header}.{}.{}", b64(&payload), b64(&signature)));
        }

        #[test]
        fn signed_weird_claims_never_panic(
            exp in prop_oneof![Just(json!(null)), any::<i64>().prop_map(|n| json!(n)), any::<f64>().prop_map(|f| json!(f)), any::<String>().prop_map(|s| json!(s))],
            room in prop_oneof![Just(json!(null)), any::<String>().prop_map(|s| json!(s)), prop::collection::vec(any::<String>(), 0..4).prop_map(|v| json!(v))],
            role in any::<String>(),
            sub in any::<String>(),
        ) {
            let c = json!({"exp": exp, "room": room, "role": role, "sub": sub});
            let token = hs(&c);
            // Any outcome but a panic; "doc" only opens for a well-formed owner/editor/viewer claim set.
            if let Ok(id) = check(&AUTHS[0], &token, "doc") {
                prop_assert_eq!(id.role.as_str(), role.as_str());
                prop_assert_eq!(&*id.subject, sub.as_str());
            }
        }
    }
}
