//! The wall clock that expiry and refresh decisions read: what is measured against expiry
//! dates from outside (credentials, tokens, ECR passwords). The caches take it as a value
//! instead of calling `SystemTime::now()`, so their tests move time instead of sleeping
//! through it.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// What time it is, for comparing with expiry dates.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// A clock as the caches hold it.
pub type Shared = Arc<dyn Clock>;

/// The machine's clock, the one the helper runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Clock for System {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The machine's clock, shared.
pub fn system() -> Shared {
    Arc::new(System)
}

/// A clock that stands still until the test moves it.
#[cfg(test)]
#[derive(Debug)]
pub struct Manual(std::sync::Mutex<SystemTime>);

#[cfg(test)]
impl Manual {
    /// A clock reading the machine's time now.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self(std::sync::Mutex::new(SystemTime::now())))
    }

    /// Moves the clock `by` forward.
    pub fn advance(&self, by: std::time::Duration) {
        *self.0.lock().unwrap() += by;
    }
}

#[cfg(test)]
impl Clock for Manual {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}
