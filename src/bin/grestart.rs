//! The `grestart` launcher; see `grestart --help` and the README's "Containers".

fn main() {
    std::process::exit(grestart::launcher::main(std::env::args_os()));
}
