from mongoferry.cli.main import main

main()
