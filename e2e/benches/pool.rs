fn main() { println!("bench: not written yet"); }
