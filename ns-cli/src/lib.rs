//! `ns`, the push server from a terminal: a UA that listens (`ns listen`, `ns webpush
//! listen`), a sender that notifies (`ns notify`, `ns webpush send`), delivery status, pull and
//! ack for UAs woken by UDP, and the keys of signed notifications and VAPID. `ns --help` and
//! `ns COMMAND --help` are its user documentation, with an example per command.
//!
//! The library holds what the binary is made of, and the Web Push payload encryption
//! ([`ece`]) and VAPID helpers ([`vapid`]) that the protocol suite (`ns-tests`) uses too.
//!
//! # Exit status
//!
//! | status | meaning |
//! |---|---|
//! | 0 | done |
//! | 64 | usage: bad command line, URL or option value |
//! | 65 | the server refused the request; its error code (Telefónica `code`, Web Push `errno`) and reason are printed on standard error |
//! | 66 | a key or certificate file can't be read or is not valid |
//! | 69 | the server can't be reached: connection refused, unknown host, TLS, timeout, or it closed the connection |
//! | 70 | internal error |
//! | 73 | an output file can't be created |
//! | 74 | standard output can't be written |
//! | 75 | the server refused for now (HTTP 429 or 503): retry later |
//! | 76 | the server answered something outside the protocol |
//!
//! Every failure is one line on standard error, `ns: ...`.

pub mod args;
pub mod ece;
pub mod error;
pub mod keys;
pub mod net;
pub mod output;
pub mod telefonica;
pub mod vapid;
pub mod webpush;

pub use error::{Error, Exit};

use args::{Cli, Command, Vapid, Webpush};
use net::Net;
use output::Out;

/// Runs one command line.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let out = Out {
        json: cli.global.json,
    };
    let global = cli.global;
    // The key commands need no server, so a bad --ca-cert does not stop them.
    match cli.command {
        Command::Keygen(args) => return telefonica::keygen(out, args),
        Command::Vapid(Vapid::Keygen(args)) => return webpush::vapid_keygen(out, args),
        _ => {}
    }
    let net = Net::new(global.ca_cert.as_deref())?;
    match cli.command {
        Command::Token => telefonica::token(&net, out, &global).await,
        Command::Listen(args) => telefonica::listen(&net, out, &global, args).await,
        Command::Notify(args) => telefonica::notify(&net, out, args).await,
        Command::Status(args) => telefonica::status(&net, out, args).await,
        Command::Pull(args) => telefonica::pull(&net, out, &global, args).await,
        Command::Ack(args) => telefonica::ack(&net, out, &global, args).await,
        Command::Webpush(Webpush::Listen(args)) => webpush::listen(&net, out, &global, args).await,
        Command::Webpush(Webpush::Send(args)) => webpush::send_message(&net, out, args).await,
        Command::Keygen(_) | Command::Vapid(_) => Ok(()),
    }
}
