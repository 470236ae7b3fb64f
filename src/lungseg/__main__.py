from lungseg.cli import main

main()
