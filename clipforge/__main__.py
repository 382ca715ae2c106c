from clipforge.cli import main

raise SystemExit(main())
