from snpvirt.cli.app import main

main()
