* two-input NAND
.subckt nand2 A B Y VDD VSS
M1 Y A VDD VDD pmos W=2u L=0.13u
M2 Y B VDD VDD pmos W=2u L=0.13u
M3 Y A n1 VSS nmos W=2u L=0.13u
M4 n1 B VSS VSS nmos W=2u L=0.13u
.ends
