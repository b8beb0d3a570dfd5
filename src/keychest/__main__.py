from keychest.cli import main

main()
