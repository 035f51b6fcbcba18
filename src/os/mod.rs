//! What the relay needs from the kernel beyond what std, nix and tokio
//! offer safely. With `src/apache`, the only place that may use `unsafe`;
//! each block says why it is sound.

pub mod listener;
pub mod rcvlowat;
pub mod shm;
pub mod sock_diag;
pub mod socket_kind;
pub mod timerfd;
