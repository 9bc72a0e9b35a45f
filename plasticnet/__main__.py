from plasticnet.cli import main

raise SystemExit(main())
