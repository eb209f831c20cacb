fn main() {
    println!("enisync {}", env!("CARGO_PKG_VERSION"));
}
