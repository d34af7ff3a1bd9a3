//! The command line: every option also an `NS_...` environment variable where a script would
//! set it once, and an example per command in its `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::exit_table;

/// Where a local `ns-standalone` listens for UAs (README: ws 8080, notify 8081, pull 8082).
pub const DEFAULT_SERVER: &str = "ws://127.0.0.1:8080";
pub const DEFAULT_PULL_SERVER: &str = "http://127.0.0.1:8082";

const ABOUT: &str = "The push server from a terminal: a UA that listens, a sender that notifies";

const LONG_ABOUT: &str = "\
The push server from a terminal: a UA that listens, a sender that notifies, key generation,
and both sides of Web Push. Made for trying a server out and for scripts: results go to
standard output (one JSON object per line with --json), errors to standard error as one line,
and the exit status says what happened.

Defaults fit a local ns-standalone: UAs at ws://127.0.0.1:8080 (--server, NS_SERVER),
pull and ack at http://127.0.0.1:8082 (--pull-server, NS_PULL_SERVER). Notify URLs and push
endpoints are full URLs, taken as given. https:// and wss:// trust the webpki roots plus the
certificates of --ca-cert (NS_CA_CERT).";

/// Examples, then the exit table.
const HELP_TAIL: &str = concat!(
    "\
Examples:
  ns listen                       # terminal 1: prints a notify URL, then each message
  ns notify http://localhost:8081/notify/Xy... hi     # terminal 2: the URL terminal 1 printed
  ns webpush listen               # prints a subscription, then each decrypted message
  ns webpush send http://localhost:8081/wpush/v2/... hi --p256dh BCVx... --auth BTBZ...
                                  # the command `ns webpush listen` says on standard error

",
    exit_table!()
);

#[derive(Debug, Parser)]
#[command(name = "ns", version, about = ABOUT, long_about = LONG_ABOUT, after_help = HELP_TAIL)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The UA server (ns-ua-ws): ws://, wss://, http:// or https://.
    #[arg(long, global = true, env = "NS_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// The pull server (ns-ua-udp), for `pull` and `ack`.
    #[arg(long, global = true, env = "NS_PULL_SERVER", default_value = DEFAULT_PULL_SERVER)]
    pub pull_server: String,
    /// A PEM file of CA certificates to trust besides the webpki roots.
    #[arg(long, global = true, env = "NS_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// One JSON object per line on standard output instead of text.
    #[arg(long, global = true, env = "NS_JSON")]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Gets a new uatoken (GET /token) and prints it.
    #[command(after_help = "Example:\n  TOKEN=$(ns token --server ws://push.example:8080)")]
    Token,
    /// A UA in the terminal: registers, prints the notify URL, then each message as it arrives.
    #[command(
        long_about = "A UA in the terminal. Connects to the UA WebSocket, says register/ua with \
--token (or a new one, printed on standard error), register/wa for --watoken (or a new one), \
prints the notify URL on the first line, then each notification's message on a line of its \
own as it arrives, and acks it. Standard error says, ready to paste in another terminal, the \
`ns notify` command that sends to it. Runs until Ctrl-C, or until --count messages came.\n\n\
With --json the first line is {\"notifyUrl\", \"uatoken\", \"watoken\"} and each next one is \
the notification object as the server sent it.",
        after_help = "Examples:\n  ns listen     # then, in another terminal: ns notify URL hi \
(the URL it printed)\n  ns listen --watoken my-app --key key.pem     \
# a WA whose sender must sign (see `ns keygen`)\n  ns listen --token \"$TOKEN\" --interface \
127.0.0.1:5000 --count 0   # register for UDP wake-ups, then leave"
    )]
    Listen(Listen),
    /// Sends a notification to a notify URL, as an application server does.
    #[command(
        long_about = "Sends a notification to a notify URL (POST), as an application server \
does, and prints the server's messageId. With --sign the message is signed RSA-SHA256 with \
that private key, as a WA registered with its public key requires. With --repeat N, sends N \
notifications (ids ID-1 ... ID-N) one after the other, shows progress and a rate on standard \
error, and prints a summary.",
        after_help = "Examples:\n  ns notify http://localhost:8081/notify/Xy... 'Hello, world'\n  \
ns notify \"$URL\" hi --id order-42 --ttl 60 --priority 1 --sign key.pem\n  ns notify \"$URL\" \
load --repeat 1000"
    )]
    Notify(Notify),
    /// Prints the delivery status of a notification (GET URL/ID), or of a Web Push Location.
    #[command(after_help = "Examples:\n  ns status \"$URL\" order-42\n  ns status \
http://localhost:8081/m/AbC...        # a Location answered by `ns webpush send`")]
    Status(Status),
    /// Makes an RSA key pair for signed notifications.
    #[command(
        long_about = "Makes an RSA key pair for signed notifications. The private key (PKCS#8 \
PEM) goes to --out, or to standard output after a line `pbkbase64: ...`; the pbkbase64 (base64 \
of the public key's PEM, as register/wa takes it) is printed alone when --out is given.",
        after_help = "Example:\n  ns keygen --out key.pem && ns listen --key key.pem"
    )]
    Keygen(Keygen),
    /// Pulls the pending notifications of a UA (POST /pull), as a UA woken by UDP does.
    #[command(
        after_help = "Examples:\n  ns pull --token \"$TOKEN\"\n  ns pull --token \
\"$TOKEN\" --ack      # and ack what was printed\n\nEach line is `MESSAGE_ID<TAB>MESSAGE` \
(with --json, the notification object)."
    )]
    Pull(Pull),
    /// Acks notifications of a UA (POST /ack) and prints how many were acked.
    #[command(after_help = "Example:\n  ns ack --token \"$TOKEN\" 0190f2c4-...")]
    Ack(Ack),
    /// Web Push: a UA that decrypts, and a sender that encrypts and signs (VAPID).
    #[command(subcommand)]
    Webpush(Webpush),
    /// VAPID keys for Web Push senders.
    #[command(subcommand)]
    Vapid(Vapid),
}

#[derive(Debug, Args)]
pub struct Listen {
    /// The uatoken to register with (default: a new one, printed on standard error).
    #[arg(long, env = "NS_UATOKEN", allow_hyphen_values = true)]
    pub token: Option<String>,
    /// The watoken to register (default: a new random one).
    #[arg(long, allow_hyphen_values = true)]
    pub watoken: Option<String>,
    /// Register the WA with this RSA key (a public key, or the private key from `ns keygen`):
    /// the server then accepts only notifications signed with it.
    #[arg(long, value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Register for UDP wake-ups at IP:PORT while not connected (see `ns pull`).
    #[arg(long, value_name = "IP:PORT")]
    pub interface: Option<std::net::SocketAddr>,
    /// Exit after this many messages (0: right after registering).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct Notify {
    /// The notify URL, as `ns listen` (register/wa) printed it.
    pub url: String,
    /// The message.
    pub message: String,
    /// The notification's id (default: a random one); a newer one with the same id replaces it.
    #[arg(long, allow_hyphen_values = true)]
    pub id: Option<String>,
    /// Seconds to keep it for UAs not connected (0: only those connected now).
    #[arg(long)]
    pub ttl: Option<u64>,
    /// 1 (real time, wakes a sleeping UA at once) to 4 (the default: at the next connection).
    #[arg(long)]
    pub priority: Option<u8>,
    /// Sign the message with this RSA private key (PEM), for a WA registered with its key.
    #[arg(long, value_name = "KEY.pem")]
    pub sign: Option<PathBuf>,
    /// Send N notifications, with ids ID-1 ... ID-N, showing progress; then a summary.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub repeat: u64,
}

#[derive(Debug, Args)]
pub struct Status {
    /// The notify URL, or a Web Push message Location (then without ID).
    pub url: String,
    /// The notification's id, as it was sent.
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct Keygen {
    /// Write the private key here (created, never overwritten; readable by its owner only).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The key's size.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1024..=8192))]
    pub bits: u64,
}

#[derive(Debug, Args)]
pub struct Pull {
    /// The UA's uatoken.
    #[arg(long, env = "NS_UATOKEN", allow_hyphen_values = true)]
    pub token: String,
    /// At most this many notifications.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Ack every notification printed.
    #[arg(long)]
    pub ack: bool,
}

#[derive(Debug, Args)]
pub struct Ack {
    /// The UA's uatoken.
    #[arg(long, env = "NS_UATOKEN", allow_hyphen_values = true)]
    pub token: String,
    /// The messageIds to ack.
    #[arg(required = true)]
    pub message_ids: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Webpush {
    /// A Web Push UA: subscribes, prints the subscription, then each decrypted message.
    #[command(
        long_about = "A Web Push UA, as Firefox is one: says hello over the UA WebSocket, \
registers a channel, generates its own P-256 key pair and auth secret, and prints the \
subscription as one JSON line ({\"endpoint\", \"keys\": {\"p256dh\", \"auth\"}}, what \
PushSubscription.toJSON() gives, ready for a sender) and, on standard error, the `ns webpush \
send` command that sends to it, ready to paste in another terminal. Then it decrypts each message \
(aes128gcm, or the legacy aesgcm) with its keys, prints the plaintext on a line, and acks it; \
one that does not decrypt is reported on standard error and acked with code 101. Runs until \
Ctrl-C, or until --count messages came. With --state FILE the UA, its channel and keys are \
kept in FILE and used again on the next run, so the same subscription keeps working.",
        after_help = "Examples:\n  ns webpush listen               # terminal 1: prints a \
subscription\n  ns webpush send http://localhost:8081/wpush/v2/... hi --p256dh BCVx... --auth \
BTBZ...   # terminal 2, as terminal 1 says\n  ns webpush listen \
--application-server-key \"$(ns vapid keygen --out vapid.pem)\"   # senders must sign\n  \
ns webpush listen --state sub.json --json"
    )]
    Listen(WebpushListen),
    /// Sends an encrypted (aes128gcm) message to a push endpoint, signed with VAPID if given a key.
    #[command(
        long_about = "Sends a message to a push endpoint as a Web Push library does: encrypts it \
aes128gcm for the subscription's --p256dh and --auth (RFC 8291), signs the request with VAPID \
when given --vapid-key (RFC 8292, `Authorization: vapid t=..., k=...`), and prints the \
message's Location (for `ns status`).",
        after_help = "Example:\n  ns webpush send \"$ENDPOINT\" 'Hello' --p256dh BCVx... \
--auth BTBZ... --vapid-key vapid.pem --urgency high --topic news"
    )]
    Send(WebpushSend),
}

#[derive(Debug, Args)]
pub struct WebpushListen {
    /// Bind the subscription to this VAPID public key (base64url, as `ns vapid keygen`
    /// prints it): the endpoint then takes only messages signed with its private key.
    #[arg(
        long,
        visible_alias = "vapid-public-key",
        value_name = "KEY",
        allow_hyphen_values = true
    )]
    pub application_server_key: Option<String>,
    /// Keep the UA and its subscription in FILE, to use them again next time.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Exit after this many messages (0: right after subscribing).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct WebpushSend {
    /// The subscription's endpoint.
    pub endpoint: String,
    /// The message (plaintext; it is encrypted before it leaves).
    pub message: String,
    /// The subscription's `p256dh` key (base64url).
    #[arg(long, allow_hyphen_values = true)]
    pub p256dh: String,
    /// The subscription's `auth` secret (base64url).
    #[arg(long, allow_hyphen_values = true)]
    pub auth: String,
    /// Sign with this VAPID private key: a PEM file, or the base64url key itself.
    #[arg(
        long,
        env = "NS_VAPID_KEY",
        value_name = "PEM",
        allow_hyphen_values = true
    )]
    pub vapid_key: Option<String>,
    /// The VAPID `sub` claim: how the push service can reach the sender.
    #[arg(long, env = "NS_VAPID_SUBJECT", default_value = crate::vapid::DEFAULT_SUBJECT)]
    pub subject: String,
    /// Seconds the service keeps the message for a UA not connected.
    #[arg(long, default_value_t = 2_419_200)]
    pub ttl: u64,
    #[arg(long, value_enum)]
    pub urgency: Option<Urgency>,
    /// A newer message with the same topic replaces this one while it is pending.
    #[arg(long, allow_hyphen_values = true)]
    pub topic: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Urgency {
    VeryLow,
    Low,
    Normal,
    High,
}

impl Urgency {
    pub fn header(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Vapid {
    /// Makes a VAPID key pair: the private key in PEM, the public key in base64url.
    #[command(
        long_about = "Makes a VAPID (ES256, P-256) key pair. The private key (PKCS#8 PEM) goes \
to --out, or to standard output after a line `applicationServerKey: ...`; the public key \
(base64url of the uncompressed point: a page's applicationServerKey, and `ns webpush listen \
--application-server-key`) is printed alone when --out is given. --json adds the private key \
in web-push's base64url form.",
        after_help = "Example:\n  KEY=$(ns vapid keygen --out vapid.pem)\n  ns webpush listen \
--application-server-key \"$KEY\""
    )]
    Keygen(VapidKeygen),
}

#[derive(Debug, Args)]
pub struct VapidKeygen {
    /// Write the private key here (created, never overwritten; readable by its owner only).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Tokens and keys are base64url: one in 64 starts with `-`, and is still a value.
    #[test]
    fn base64url_values_may_start_with_a_hyphen() {
        let cli = Cli::try_parse_from([
            "ns",
            "webpush",
            "send",
            "http://h/wpush/v1/x",
            "hi",
            "--p256dh",
            "-cAB",
            "--auth",
            "-x",
            "--topic",
            "-t",
        ])
        .expect("parses");
        let Command::Webpush(Webpush::Send(send)) = cli.command else {
            panic!("{:?}", cli.command);
        };
        assert_eq!((send.p256dh.as_str(), send.auth.as_str()), ("-cAB", "-x"));
        assert_eq!(send.topic.as_deref(), Some("-t"));

        let cli = Cli::try_parse_from(["ns", "ack", "--token", "-Ab", "id1"]).expect("parses");
        let Command::Ack(ack) = cli.command else {
            panic!("{:?}", cli.command);
        };
        assert_eq!((ack.token.as_str(), ack.message_ids.len()), ("-Ab", 1));
        let cli = Cli::try_parse_from(["ns", "listen", "--token", "-T", "--watoken", "-W"])
            .expect("parses");
        let Command::Listen(listen) = cli.command else {
            panic!("{:?}", cli.command);
        };
        assert_eq!(listen.token.as_deref(), Some("-T"));
        assert_eq!(listen.watoken.as_deref(), Some("-W"));
    }
}
