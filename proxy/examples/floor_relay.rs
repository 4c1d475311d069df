//! The floor for the proxy's per-transaction cost: a tokio relay that gives each client its own
//! connection to one server and copies bytes both ways, parsing nothing. `bench/instructions.sh`
//! counts its instructions per transaction next to shardline's: what is left between the two
//! is shardline's own work per transaction.
//!
//!     cargo run --release --example floor_relay -- 127.0.0.1:7432 127.0.0.1:5432

use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: shardline::allocator::Mimalloc = shardline::allocator::Mimalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(server)) = (args.next(), args.next()) else {
        eprintln!("usage: floor_relay LISTEN_ADDRESS SERVER_ADDRESS");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(&listen).await?;
    loop {
        let (mut client, _) = listener.accept().await?;
        let server = server.clone();
        tokio::spawn(async move {
            let Ok(mut backend) = TcpStream::connect(&server).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = backend.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
        });
    }
}
