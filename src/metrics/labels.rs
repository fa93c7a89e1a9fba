//! Every label value the metrics use, as enums: each one's text and the list of all of them
//! come from one list, so a value cannot be added without being created at start (where
//! each series shows 0 before its first event), and a value that was never created cannot
//! be recorded (and so dropped).

use std::marker::PhantomData;

use token_authority_jose::jwt::verify::Reason;
use tonic::Code;

/// A label's values: all of them, each one's text, and its place in `ALL`.
pub(crate) trait LabelValue: Copy + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    /// Its index in `ALL`.
    fn index(self) -> usize;
}

/// Implements `LabelValue` from one `Variant => "text"` list: the match over it is
/// exhaustive, so an enum's new variant does not compile until it is listed, and `ALL` is
/// the same list. `index` is the discriminant: the list must follow the enum's order (a
/// unit test checks it for every label).
macro_rules! label_values {
    (impl $name:ident { $($variant:ident => $text:literal,)+ }) => {
        impl LabelValue for $name {
            const ALL: &'static [$name] = &[$($name::$variant),+];
            fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }
        label_values!(impl $name { $($variant => $text,)+ });
    };
}

// The rejection's name in the gRPC enum.
label_values!(impl Reason {
    Malformed => "MALFORMED",
    UnknownKey => "UNKNOWN_KEY",
    BadSignature => "BAD_SIGNATURE",
    AlgorithmNotAllowed => "ALGORITHM_NOT_ALLOWED",
    Expired => "EXPIRED",
    NotYetValid => "NOT_YET_VALID",
    IssuerMismatch => "ISSUER_MISMATCH",
    AudienceMismatch => "AUDIENCE_MISMATCH",
    RevokedKey => "REVOKED_KEY",
    MissingClaim => "MISSING_CLAIM",
    UnsupportedHeader => "UNSUPPORTED_HEADER",
    LifetimeTooLong => "LIFETIME_TOO_LONG",
    WrongTokenType => "WRONG_TOKEN_TYPE",
    RevokedToken => "REVOKED_TOKEN",
    SuspendedToken => "SUSPENDED_TOKEN",
    StatusUnavailable => "STATUS_UNAVAILABLE",
});

// A gRPC status code as gRPC's own list (and OpenTelemetry's `rpc.response.status_code`)
// names it. `Code` is in that list's order, from 0.
label_values!(impl Code {
    Ok => "OK",
    Cancelled => "CANCELLED",
    Unknown => "UNKNOWN",
    InvalidArgument => "INVALID_ARGUMENT",
    DeadlineExceeded => "DEADLINE_EXCEEDED",
    NotFound => "NOT_FOUND",
    AlreadyExists => "ALREADY_EXISTS",
    PermissionDenied => "PERMISSION_DENIED",
    ResourceExhausted => "RESOURCE_EXHAUSTED",
    FailedPrecondition => "FAILED_PRECONDITION",
    Aborted => "ABORTED",
    OutOfRange => "OUT_OF_RANGE",
    Unimplemented => "UNIMPLEMENTED",
    Internal => "INTERNAL",
    Unavailable => "UNAVAILABLE",
    DataLoss => "DATA_LOSS",
    Unauthenticated => "UNAUTHENTICATED",
});

label_values! {
    /// The RPC methods, for the latency histogram.
    pub(crate) enum Method {
        IssueToken => "IssueToken",
        VerifyToken => "VerifyToken",
        GetJwks => "GetJwks",
        WatchKeys => "WatchKeys",
        RotateKeys => "RotateKeys",
        RevokeKey => "RevokeKey",
        ListKeys => "ListKeys",
        ExchangeToken => "ExchangeToken",
        SetTokenStatus => "SetTokenStatus",
    }
}

label_values! {
    /// The RPCs whose calls the caller policy decides (and the audit log records).
    #[derive(Default)]
    pub(crate) enum DecidedMethod {
        #[default]
        IssueToken => "IssueToken",
        RotateKeys => "RotateKeys",
        RevokeKey => "RevokeKey",
        ListKeys => "ListKeys",
        /// Txn-Token requests, over gRPC (ExchangeToken) and HTTP (POST /token).
        ExchangeToken => "ExchangeToken",
        SetTokenStatus => "SetTokenStatus",
    }
}

label_values! {
    /// What a caller decision came to: allowed, malformed, or the refusal's label (the
    /// field refused).
    pub(crate) enum DecisionOutcome {
        Allowed => "allowed",
        Malformed => "malformed",
        NoCredentials => "no_credentials",
        BadCredentials => "bad_credentials",
        NoRule => "no_rule",
        Subject => "subject",
        Audience => "audience",
        Ttl => "ttl",
        Claims => "claims",
        Cnf => "cnf",
        NotAdmin => "not_admin",
        AdminOnly => "admin_only",
        Throttled => "throttled",
        /// A Txn-Token scope wider than the rule's or the subject token's.
        Scope => "scope",
        /// A Txn-Token request's subject token was refused.
        SubjectToken => "subject_token",
    }
}

label_values! {
    /// A policy reload's outcome.
    pub(crate) enum ReloadOutcome {
        Ok => "ok",
        Failed => "failed",
    }
}

label_values! {
    /// A file the server reloads while it runs.
    pub(crate) enum ReloadedFile {
        Policy => "policy",
        Tls => "tls",
    }
}

label_values! {
    /// The JWKS responses' statuses.
    pub(crate) enum JwksStatus {
        Full => "200",
        NotModified => "304",
    }
}

label_values! {
    /// Key lifecycle events.
    pub(crate) enum KeyEvent {
        Rotation => "rotation",
        Revocation => "revocation",
        Deletion => "deletion",
    }
}

label_values! {
    /// The two listeners.
    pub(crate) enum ListenerName {
        Grpc => "grpc",
        Http => "http",
    }
}

label_values! {
    /// Why a listener closed a connection on its own.
    pub(crate) enum ClosedReason {
        /// At accept: the listener was at --max-connections.
        Limit => "limit",
        /// No TLS handshake and first protocol bytes within --handshake-timeout.
        HandshakeTimeout => "handshake_timeout",
        /// A failed TLS handshake, or first bytes that were not the protocol's.
        HandshakeFailed => "handshake_failed",
        /// After --idle-timeout with no request in flight.
        Idle => "idle",
        /// The client stopped reading a response for --idle-timeout.
        Stalled => "stalled",
        /// At accept: the peer's address held --max-connections-per-ip already.
        PeerLimit => "peer_limit",
        /// Asked to close (GOAWAY) at --max-connection-age.
        MaxAge => "max_age",
    }
}

label_values! {
    /// Why a WatchKeys stream was refused or dropped.
    pub(crate) enum WatcherEnd {
        /// --max-watchers were open.
        Limit => "limit",
        /// Its address had --max-watchers-per-ip open.
        PeerLimit => "peer_limit",
        /// A message stayed untaken for --watch-send-timeout.
        Slow => "slow",
    }
}

/// One metric handle per value of a label, made at start from `E::ALL`: a lookup is an
/// index, and every value has its handle.
#[derive(Clone, Debug)]
pub(crate) struct PerLabel<E, M> {
    handles: Vec<M>,
    label: PhantomData<fn(E)>,
}

impl<E: LabelValue, M> PerLabel<E, M> {
    pub(crate) fn new(make: impl FnMut(E) -> M) -> PerLabel<E, M> {
        PerLabel {
            handles: E::ALL.iter().copied().map(make).collect(),
            label: PhantomData,
        }
    }

    pub(crate) fn get(&self, value: E) -> &M {
        // `handles` follows `ALL`, and `index` is the place in it.
        &self.handles[value.index()]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn check<E: LabelValue>() {
        for (place, value) in E::ALL.iter().enumerate() {
            assert_eq!(value.index(), place, "{} out of place", value.as_str());
        }
        let texts: HashSet<&str> = E::ALL.iter().map(|value| value.as_str()).collect();
        assert_eq!(texts.len(), E::ALL.len(), "a label text used twice");
    }

    #[test]
    fn every_label_lists_its_values_in_order_and_once() {
        check::<Reason>();
        check::<Code>();
        check::<Method>();
        check::<DecidedMethod>();
        check::<DecisionOutcome>();
        check::<ReloadOutcome>();
        check::<ReloadedFile>();
        check::<JwksStatus>();
        check::<KeyEvent>();
        check::<ListenerName>();
        check::<ClosedReason>();
        check::<WatcherEnd>();
    }

    #[test]
    fn each_value_finds_its_own_handle() {
        let handles = PerLabel::new(ClosedReason::as_str);
        for value in ClosedReason::ALL {
            assert_eq!(*handles.get(*value), value.as_str());
        }
    }
}
