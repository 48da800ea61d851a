//! Loads the balancer and prints the verifier's verdict (the tail of its
//! log on failure): `cargo run -p lb-tests --example verify`.

fn main() {
    let sizes = lb::dataplane::Sizes::default();
    for program in ["lb_balancer", "lb_decap"] {
        match lb::dataplane::Dataplane::load_program(lb::dataplane::OBJECT, sizes, program) {
            Ok(_) => println!("{program}: verifier accepted"),
            Err(error) => {
                let text = format!("{error:?}").replace("\\n", "\n");
                let tail: String = text
                    .chars()
                    .rev()
                    .take(6000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                println!("{program}: rejected\n{tail}");
                std::process::exit(1);
            }
        }
    }
}
