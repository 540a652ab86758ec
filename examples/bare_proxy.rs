//! The "bare Pingora" anchor of the load benchmark (`bench/run.sh`): a minimal `ProxyHttp`
//! with only `upstream_peer`, to one fixed upstream, over HTTP/1.1, with the same thread
//! count as sessiongate (`std::thread::available_parallelism`).
//!
//! ```text
//! cargo run --release --example bare_proxy -- --listen 127.0.0.1:8081 --upstream 127.0.0.1:3000
//! ```

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::*;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;

#[derive(Parser)]
#[command(about = "Minimal Pingora reverse proxy: the baseline for sessiongate's load benchmark")]
struct Args {
    /// Address to listen on (plain HTTP/1.1).
    #[arg(long)]
    listen: SocketAddr,
    /// The one upstream (host:port, plain HTTP/1.1, pooled keep-alive).
    #[arg(long)]
    upstream: SocketAddr,
}

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service_with_name(
        &server.configuration,
        Bare {
            upstream: args.upstream,
        },
        "bare proxy",
    );
    proxy.add_tcp(&args.listen.to_string());
    server.add_service(proxy);
    server.run_forever();
}
