//! Entry points for `ns-fuzz`, not an API: the readers of the `POST /pull` and `POST /ack`
//! bodies, which see untrusted input, without the store or the network behind them.

use common::crypto::Secret;

/// The most notifications a fuzzed pull may ask for, as the default `--max-pull`.
const MAX_PULL: usize = super::DEFAULT_MAX_PULL;

/// Reads a `POST /pull` body as the route does; whether it was accepted.
pub fn pull_body(body: &[u8], secret: &Secret) -> bool {
    super::read_pull(body, secret, MAX_PULL).is_ok_and(|(_, limit)| (1..=MAX_PULL).contains(&limit))
}

/// Reads a `POST /ack` body as the route does; whether it was accepted.
pub fn ack_body(body: &[u8], secret: &Secret) -> bool {
    super::read_ack(body, secret).is_ok()
}
