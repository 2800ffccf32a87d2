//! The one place gRPC codes are chosen. Handlers return [`CsiError`]; engine, mount and id errors
//! convert into it by kind, and it becomes a `tonic::Status` whose message is the full chain.
//! Codes follow the CSI spec and what the sidecars act on (FACTS.md): `RESOURCE_EXHAUSTED`
//! reschedules a provision, `ABORTED` means "in flight, retry", everything else is final.

use tonic::{Code, Status};

use crate::dm::DmError;
use crate::engine::EngineError;
use crate::mount::MountError;
use crate::store::StoreError;

use crate::shared::chain;
use crate::shared::ids::IdError;

#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl CsiError {
    pub fn code(&self) -> Code {
        match self {
            CsiError::InvalidArgument(_) => Code::InvalidArgument,
            CsiError::NotFound(_) => Code::NotFound,
            CsiError::AlreadyExists(_) => Code::AlreadyExists,
            CsiError::ResourceExhausted(_) => Code::ResourceExhausted,
            CsiError::OutOfRange(_) => Code::OutOfRange,
            CsiError::FailedPrecondition(_) => Code::FailedPrecondition,
            CsiError::Aborted(_) => Code::Aborted,
            CsiError::Unimplemented(_) => Code::Unimplemented,
            CsiError::Unavailable(_) => Code::Unavailable,
            CsiError::Internal(_) => Code::Internal,
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        CsiError::InvalidArgument(msg.into())
    }
}

impl From<EngineError> for CsiError {
    fn from(e: EngineError) -> Self {
        let msg = chain(&e);
        match e {
            EngineError::InvalidName(_) => CsiError::InvalidArgument(msg),
            EngineError::InvalidSize { .. } => CsiError::OutOfRange(msg),
            EngineError::NotFound { .. } => CsiError::NotFound(msg),
            EngineError::AlreadyExists { .. } => CsiError::AlreadyExists(msg),
            EngineError::InvalidGroup(_) => CsiError::InvalidArgument(msg),
            EngineError::GroupExists { .. } => CsiError::AlreadyExists(msg),
            // The spec's DeleteSnapshot: a member of a group is INVALID_ARGUMENT.
            EngineError::GroupMember { .. } => CsiError::InvalidArgument(msg),
            EngineError::ResourceExhausted(_) => CsiError::ResourceExhausted(msg),
            EngineError::Busy { .. } => CsiError::FailedPrecondition(msg),
            EngineError::ForeignPool(_) => CsiError::FailedPrecondition(msg),
            EngineError::Inconsistent(_) => CsiError::Internal(msg),
            EngineError::Dm(DmError::Busy(_)) => CsiError::FailedPrecondition(msg),
            EngineError::Dm(_) => CsiError::Internal(msg),
            EngineError::Store(StoreError::Locked { .. }) => CsiError::Unavailable(msg),
            EngineError::Store(_) => CsiError::Internal(msg),
        }
    }
}

impl From<MountError> for CsiError {
    fn from(e: MountError) -> Self {
        let msg = chain(&e);
        match e {
            MountError::WrongFilesystem { .. } => CsiError::FailedPrecondition(msg),
            MountError::Sys { .. } | MountError::Io { .. } | MountError::Tool(_) => CsiError::Internal(msg),
        }
    }
}

impl From<IdError> for CsiError {
    fn from(e: IdError) -> Self {
        CsiError::InvalidArgument(chain(&e))
    }
}

impl From<CsiError> for Status {
    fn from(e: CsiError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Refusal;
    use crate::names::{Name, NameError};
    use crate::store::Kind;
    use crate::units::ThinId;
    use nix::errno::Errno;

    fn name() -> Name {
        Name::new("v").unwrap()
    }

    /// Every engine error variant, with the code it must get.
    #[test]
    fn every_engine_error_has_its_code() {
        let cases: Vec<(EngineError, Code)> = vec![
            (EngineError::InvalidName(NameError::Empty), Code::InvalidArgument),
            (EngineError::InvalidSize { bytes: 1, reason: "x".into() }, Code::OutOfRange),
            (EngineError::NotFound { kind: Kind::Volume, name: name() }, Code::NotFound),
            (
                EngineError::AlreadyExists { kind: Kind::Snapshot, name: name(), reason: "x".into() },
                Code::AlreadyExists,
            ),
            (EngineError::InvalidGroup("x".into()), Code::InvalidArgument),
            (EngineError::GroupExists { name: name(), reason: "x".into() }, Code::AlreadyExists),
            (EngineError::GroupMember { name: name(), group: name() }, Code::InvalidArgument),
            (EngineError::ResourceExhausted(Refusal::NeedsCheck), Code::ResourceExhausted),
            (EngineError::ResourceExhausted(Refusal::Budget { requested: 2, allowed: 1 }), Code::ResourceExhausted),
            (EngineError::Busy { kind: Kind::Volume, name: name() }, Code::FailedPrecondition),
            (EngineError::ForeignPool("x".into()), Code::FailedPrecondition),
            (EngineError::Inconsistent("x".into()), Code::Internal),
            (EngineError::Dm(DmError::Busy(ThinId::new(1).unwrap())), Code::FailedPrecondition),
            (EngineError::Dm(DmError::Kernel { op: "x".into(), errno: Errno::EIO }), Code::Internal),
            (EngineError::Store(StoreError::Locked { path: "/x".into() }), Code::Unavailable),
            (EngineError::Store(StoreError::IdsExhausted), Code::Internal),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            let status: Status = CsiError::from(e).into();
            assert_eq!(status.code(), code, "{text}");
            assert!(status.message().contains(&text), "message keeps the cause: {}", status.message());
        }
    }

    #[test]
    fn mount_and_id_errors_have_their_codes() {
        let wrong = MountError::WrongFilesystem { device: "/dev/x".into(), found: "xfs".into(), wanted: "ext4".into() };
        assert_eq!(CsiError::from(wrong).code(), Code::FailedPrecondition);
        let io = MountError::Io { what: "x".into(), source: std::io::Error::other("boom") };
        assert_eq!(CsiError::from(io).code(), Code::Internal);
        assert_eq!(CsiError::from(IdError::Empty).code(), Code::InvalidArgument);
    }

    #[test]
    fn messages_carry_the_source_chain_once() {
        let e = EngineError::Dm(DmError::Io { what: "opening x".into(), source: std::io::Error::other("denied") });
        let s: Status = CsiError::from(e).into();
        assert_eq!(s.message(), "opening x: denied");
    }
}
