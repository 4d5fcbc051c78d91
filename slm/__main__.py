from slm.cli import main

raise SystemExit(main())
