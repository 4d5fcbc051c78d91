from slm.native import main

raise SystemExit(main())
