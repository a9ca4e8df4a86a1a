//! Who is acting: the authenticated key's user, the key and its role. The
//! API builds it from the `Authorization` header; jobs carry it so the worker
//! applies the same object-level checks.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode};
use crate::ids::{ApiKeyId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Support,
    Sender,
    Beneficiary,
    Psp,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Support => "support",
            Role::Sender => "sender",
            Role::Beneficiary => "beneficiary",
            Role::Psp => "psp",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "admin" => Role::Admin,
            "support" => Role::Support,
            "sender" => Role::Sender,
            "beneficiary" => Role::Beneficiary,
            "psp" => Role::Psp,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub user_id: UserId,
    pub key_id: ApiKeyId,
    pub role: Role,
}

impl Principal {
    /// A principal for scheduled work started by the system itself.
    pub fn system() -> Self {
        Self { user_id: UserId(uuid::Uuid::nil()), key_id: ApiKeyId(uuid::Uuid::nil()), role: Role::Admin }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Admin and support read everything.
    pub fn reads_all(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Support)
    }

    /// Refuses with `FORBIDDEN` unless the role is one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), Error> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(Error::problem(ErrorCode::Forbidden, format!("role {} may not do this", self.role.as_str())))
        }
    }

    /// Refuses with `FORBIDDEN` unless the caller is admin or acts as `user`
    /// with one of `roles`.
    pub fn require_self_or_admin(&self, user: UserId, roles: &[Role]) -> Result<(), Error> {
        if self.is_admin() || (roles.contains(&self.role) && self.user_id == user) {
            Ok(())
        } else {
            Err(Error::problem(ErrorCode::Forbidden, "you may only act for yourself"))
        }
    }

    /// The actor string written in audit rows.
    pub fn actor(&self) -> String {
        if self.user_id.0.is_nil() { "system".to_string() } else { format!("user:{}", self.user_id) }
    }
}
