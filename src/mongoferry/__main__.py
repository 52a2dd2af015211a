from mongoferry.cli import main

main()
