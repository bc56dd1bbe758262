"""Small fidelity experiments of the recipe's claims: `slmkit repro ...` and the µP tools (`slmkit mup ...`)."""
