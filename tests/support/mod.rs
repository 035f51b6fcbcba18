//! Shared pieces of the relay integration tests: a raw AMQP client, the
//! private RabbitMQ node (through tests/harness/rabbit.py) and the relay
//! running in this process.

#![allow(dead_code)]

pub mod amqp;
pub mod rabbit;
pub mod relay;

/// `ensure!(cond, "format", args)`: return `Err(String)` when `cond` is false.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}
